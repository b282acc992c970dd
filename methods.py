"""Methods: what a generator is trained to output, with which losses, and how its frames are scored.

The training loop (engine.py), checkpoints, resume, logging and evaluation (evaluation.py) are shared; a method
supplies the rest:

- ``split``: the generator's input and target from a clip (B, clip_len, 3, H, W) in [-1, 1];
- ``train_step``: one alternating G/D update on a batch, returning its losses;
- ``frame_errors``: per-frame errors beyond PSNR that the score needs (computed during evaluation);
- ``anomaly_values``: the per-frame anomaly value (higher = more anomalous) before normalisation;
- ``resolve``: the config with its ``auto`` inputs resolved to what this machine has (recorded in the run).

``prediction`` (FFP, Liu et al., CVPR 2018; the ffp and stemgan generators): clip -> next frame, the FFP losses,
score = -PSNR.  ``skipganomaly`` (Akcay et al., IJCNN 2019): frame -> the same frame, adversarial + contextual +
latent losses, score = lambda * reconstruction MSE + (1 - lambda) * latent MSE (losses/skipganomaly.py).
``f2lm`` and ``destroyer`` (MAMA, Hong et al., IEEE Access 2024): the F2LM generator's prediction with triplet
losses, then a Destroyer trained against it; score = weighted z-scored errors and triplet hinges (losses/mama.py).

Every method's scored frames are the last frame of each clip, so with the same ``--clip_len`` a reconstruction
method is scored on exactly the frames a prediction method is (each video's first clip_len-1 frames dropped) and
the AUCs compare like for like; ``--clip_len=1`` scores every frame of a reconstruction method.  A generator
declares its method when it registers (models/__init__.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import nn

import losses
import losses.skipganomaly as sg
from config import Config
from errors import UserError
from runtime import autocast

if TYPE_CHECKING:  # engine imports this module
    from engine import Trainer


def _channels_last(trainer: "Trainer", *tensors: torch.Tensor) -> list[torch.Tensor]:
    if not trainer.channels_last:
        return list(tensors)
    return [t.contiguous(memory_format=torch.channels_last) for t in tensors]


def _optimizer_step(loss: torch.Tensor, optimizer, scaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


class PredictionMethod:
    """FFP: predict frame t from frames t-clip_len+1 .. t-1 (Liu et al., CVPR 2018; see engine.py and losses/)."""

    name = "prediction"
    scores_with_discriminator = False
    needs_frame_errors = False  # the score is PSNR alone
    uses_flow_loss = True
    checkpoint_names: dict[str, str] = {}
    loss_names = ("g_total", "g_int", "g_grad", "g_flow", "g_adv", "d_loss")

    def check(self, cfg: Config) -> None:
        if cfg.clip_len < 2:
            raise UserError(f"--model={cfg.model} predicts a frame from the ones before it: --clip_len must be at "
                            f"least 2, got {cfg.clip_len}")
        if cfg.discriminator == "dcgan":
            raise UserError(f"--discriminator=dcgan is Skip-GANomaly's (a logit and features per frame); "
                            f"--model={cfg.model} trains with a patch discriminator: use --discriminator=pixel")

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :-1].flatten(1, 2), x[:, -1]

    def train_step(self, trainer: "Trainer", clip_ids, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """D step on the detached prediction, then G step with D frozen (paper Algorithm 1)."""
        cfg, G, D = trainer.cfg, trainer._g_step, trainer._d_step
        inputs, target = _channels_last(trainer, *self.split(x))
        last = x[:, -2]
        with autocast(trainer.device, trainer.amp_dtype):
            prediction = G(inputs).float()
        with autocast(trainer.device, trainer.amp_dtype):
            d_loss = losses.discriminator_loss(D(target).float(), D(prediction.detach()).float())
        _optimizer_step(d_loss, trainer.opt_d, trainer.scaler_d)

        # G step with D frozen: G's backward passes through D without touching D's gradients.  Under DDP it calls
        # the plain D (no gradient of D to synchronise); G's gradients are averaged by G's DDP wrapper.
        flownet = trainer.flownet
        flow_target = trainer._ground_truth_flow(clip_ids, last, target) if flownet is not None else None
        D = trainer.discriminator
        D.requires_grad_(False)
        try:
            with autocast(trainer.device, trainer.amp_dtype):
                g_adv = losses.generator_adversarial_loss(D(prediction).float())
                g_flow = torch.zeros((), device=trainer.device)
                if flownet is not None:
                    flow_pred = flownet(torch.stack([last, prediction], dim=2)).float()
                    g_flow = losses.flow_loss(flow_pred, flow_target) / cfg.flow_loss_scale
            g_int = losses.intensity_loss(prediction, target)
            g_grad = losses.gradient_loss(prediction, target)
            g_total = cfg.lam_int * g_int + cfg.lam_grad * g_grad + cfg.lam_adv * g_adv
            if flownet is not None:
                g_total = g_total + cfg.lam_flow * g_flow
            _optimizer_step(g_total, trainer.opt_g, trainer.scaler_g)
        finally:
            D.requires_grad_(True)
        return dict(g_total=g_total, g_int=g_int, g_grad=g_grad, g_flow=g_flow, g_adv=g_adv, d_loss=d_loss,
                    prediction=prediction, target=target)

    def resolve(self, cfg: Config) -> Config:
        from flownet import resolve_flownet_name
        return cfg.replace(flownet=resolve_flownet_name(cfg))  # 'auto' is recorded as what it resolved to

    def frame_errors(self, prediction: torch.Tensor, target: torch.Tensor, discriminator: Optional[nn.Module],
                     generator: Optional[nn.Module] = None) -> dict[str, torch.Tensor]:
        return {}

    def anomaly_values(self, psnr: list[np.ndarray], extras: dict[str, list[np.ndarray]],
                       cfg: Config) -> list[np.ndarray]:
        return [-np.asarray(p, dtype=np.float64) for p in psnr]


class SkipGANomalyMethod:
    """Skip-GANomaly: reconstruct the frame (Akcay et al., IJCNN 2019; models/ and losses/skipganomaly.py).

    Authors' code, followed: G is updated before D on the same reconstruction; D is re-initialised when its loss
    falls below ``--d_reinit_below`` (1e-5); Adam 2e-4 with beta1 0.5 and no decay (config.MODEL_PRESETS).
    Fixed: no latent loss in D's objective, no noise added to G's input (losses/ and models/skipganomaly.py say why).
    Ours: scoring runs G and D in eval mode (BatchNorm running statistics; the authors never call eval()), so a
    frame's score does not depend on the frames batched with it, and D's features in fp32; the score is min-max
    normalised per video like FFP's, and over the whole test set (the authors' rule) with ``--score_norm=global``.
    Label-free selection (``--val_holdout``) picks the checkpoint that reconstructs held-out normal frames best,
    which favours a generator that copies its input: for this method, read it with the normal/anomalous PSNR gap.
    """

    name = "skipganomaly"
    scores_with_discriminator = True
    needs_frame_errors = True
    uses_flow_loss = False
    checkpoint_names: dict[str, str] = {}
    loss_names = ("g_total", "g_adv", "g_con", "g_lat", "d_loss", "d_reinit")

    def check(self, cfg: Config) -> None:
        if cfg.discriminator != "dcgan":
            raise UserError(f"--model={cfg.model} needs its DCGAN discriminator (its features give the latent loss "
                            f"and score): drop --discriminator={cfg.discriminator}")
        if cfg.flownet != "none":
            raise UserError(f"--model={cfg.model} reconstructs single frames and has no flow loss: drop "
                            f"--flownet={cfg.flownet}")

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, -1], x[:, -1]

    def train_step(self, trainer: "Trainer", clip_ids, x: torch.Tensor) -> dict[str, torch.Tensor]:
        import distributed
        from models.skipganomaly import init_weights

        cfg, G = trainer.cfg, trainer._g_step
        frame, _ = _channels_last(trainer, *self.split(x))
        with autocast(trainer.device, trainer.amp_dtype):
            reconstruction = G(frame).float()

        D = trainer.discriminator  # G step first (the authors' order), D frozen as in the prediction method
        D.requires_grad_(False)
        try:
            with autocast(trainer.device, trainer.amp_dtype):
                fake_logit, fake_features = D(reconstruction)
                _, real_features = D(frame)
            g_adv = sg.adversarial_loss(fake_logit.float())
            g_con = sg.contextual_loss(reconstruction, frame.float())
            g_lat = sg.latent_loss(real_features.float(), fake_features.float())
            g_total = cfg.lam_adv * g_adv + cfg.lam_con * g_con + cfg.lam_lat * g_lat
            _optimizer_step(g_total, trainer.opt_g, trainer.scaler_g)
        finally:
            D.requires_grad_(True)

        with autocast(trainer.device, trainer.amp_dtype):
            real_logit, _ = trainer._d_step(frame)
            fake_logit, _ = trainer._d_step(reconstruction.detach())
        d_loss = sg.discriminator_loss(real_logit.float(), fake_logit.float())
        _optimizer_step(d_loss, trainer.opt_d, trainer.scaler_d)

        # The authors' guard against a discriminator that has won outright; every rank decides on the mean loss.
        reinit = torch.zeros((), device=trainer.device)
        if cfg.d_reinit_below > 0:
            mean_d = float(distributed.all_reduce_mean(d_loss.detach().float().reshape(1))[0])
            if mean_d < cfg.d_reinit_below:
                trainer.discriminator.apply(init_weights)
                distributed.broadcast_module(trainer.discriminator)  # DDP syncs gradients, not re-drawn weights
                reinit = torch.ones((), device=trainer.device)
        return dict(g_total=g_total, g_adv=g_adv, g_con=g_con, g_lat=g_lat, d_loss=d_loss, d_reinit=reinit,
                    prediction=reconstruction, target=frame)

    def resolve(self, cfg: Config) -> Config:
        return cfg

    def frame_errors(self, prediction: torch.Tensor, target: torch.Tensor, discriminator: Optional[nn.Module],
                     generator: Optional[nn.Module] = None) -> dict[str, torch.Tensor]:
        if discriminator is None:
            raise ValueError("Skip-GANomaly's score needs the discriminator's features")
        was_training = discriminator.training
        discriminator.eval()
        # fp32 even under autocast: in bf16 the two feature vectors would each be rounded (~0.4%) before their
        # difference is taken, a sizeable share of a small latent error.
        with torch.autocast(target.device.type, enabled=False):
            _, real = discriminator(target.float())
            _, fake = discriminator(prediction.float())
        discriminator.train(was_training)
        return {"reconstruction_mse": sg.per_sample_mse(prediction, target), "latent_mse": sg.per_sample_mse(real, fake)}

    def anomaly_values(self, psnr: list[np.ndarray], extras: dict[str, list[np.ndarray]],
                       cfg: Config) -> list[np.ndarray]:
        return [sg.anomaly_score(r, l, cfg.score_lambda)
                for r, l in zip(extras["reconstruction_mse"], extras["latent_mse"])]


def check_cache_fits(trainer: "Trainer", aux) -> None:
    """MAMA's input cache grows to (2 flow + 21 label channels) x H x W fp16 values per training frame, in RAM (and
    per process under torchrun): say how much, and stop before a run that cannot hold it starts."""
    import os

    channels = 2 * (aux.flow is not None) + 21 * (aux.semantic is not None)
    frames = sum(trainer.train_clips.videos.counts)
    need = channels * trainer.cfg.img_size ** 2 * 2 * frames
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 0
    if trainer.rank == 0 and need > 2 ** 30:
        print(f"note: F2LM's input cache will grow to {need / 2 ** 30:.1f} GiB of RAM per process over the first "
              f"epoch ({frames} training frames)")
    if ram and need > 0.8 * ram:
        raise UserError(f"F2LM's flows/semantic maps of the {frames} training frames need {need / 2 ** 30:.1f} GiB "
                        f"of RAM ({ram / 2 ** 30:.1f} GiB here): lower --img_size, or drop the label stream with "
                        f"--semantic=none")


class F2LMMethod:
    """MAMA stage 1, the F2LM generator (Hong et al., IEEE Access 2024; models/f2lm.py, losses/mama.py).

    Authors' code, followed: G is updated first (intensity + gradient + 0.05 least-squares adversarial + the two
    triplet losses; no flow loss: flows are an input), then D on the detached prediction; AdamW with weight decay
    1e-4 and no decay schedule (config.MODEL_PRESETS).  Ours: the flows and semantic maps of the training frames come
    from frozen networks and are computed once per frame pair / frame and kept (fp16, on the CPU), not every step.
    The score is the fixed-weight sum of the z-scored generator error and triplet hinges (losses/mama.py).
    """

    name = "f2lm"
    scores_with_discriminator = False
    needs_frame_errors = True
    uses_flow_loss = False
    checkpoint_names: dict[str, str] = {}
    loss_names = ("g_total", "g_int", "g_grad", "g_adv", "g_triplet_motion", "g_triplet_label", "d_loss")

    def check(self, cfg: Config) -> None:
        if cfg.model != "f2lm":
            raise UserError(f"--stage={cfg.stage} trains MAMA (--model=f2lm), not --model={cfg.model}")
        PredictionMethod.check(self, cfg)  # type: ignore[arg-type]

    def resolve(self, cfg: Config) -> Config:
        from models.f2lm import resolve_inputs
        return resolve_inputs(cfg)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :-1].flatten(1, 2), x[:, -1]

    @staticmethod
    def f2lm(trainer: "Trainer") -> nn.Module:
        return getattr(trainer.generator, "generator", trainer.generator)  # stage 2 holds it inside MAMA

    def auxiliary_inputs(self, trainer: "Trainer", clip_ids, x: torch.Tensor):
        """(motion, semantic) of these training clips, (B, 2(n-1), H, W) and (B, 21n, H, W) or None, from the
        per-frame cache (the input networks are frozen and a frame's inputs never change)."""
        aux = self.f2lm(trainer).aux
        n, b = trainer.cfg.n_inputs, x.shape[0]
        starts = trainer.train_clips.index[np.asarray(clip_ids)]
        if "f2lm" not in trainer.method_cache:
            check_cache_fits(trainer, aux)
        cache = trainer.method_cache.setdefault("f2lm", {"flow": {}, "labels": {}})

        def cached(kind: str, count: int, compute) -> torch.Tensor:
            store = cache[kind]
            keys = [(int(v), int(s) + k) for v, s in starts for k in range(count)]  # (video, first frame)
            missing = {key: i for i, key in enumerate(keys) if key not in store}
            if missing:
                slots = list(missing.values())
                with autocast(trainer.device, trainer.amp_dtype):
                    values = compute([i // count for i in slots], [i % count for i in slots])
                for key, value in zip(missing, values):
                    store[key] = value.to("cpu", torch.float16)
            stacked = torch.stack([store[key] for key in keys]).to(trainer.device, torch.float32)
            return stacked.reshape(b, -1, *stacked.shape[-2:])

        motion = semantic = None
        if aux.flow is not None:
            motion = cached("flow", n - 1, lambda bi, ki: aux.flows(x[bi, ki], x[bi, [k + 1 for k in ki]]))
        if aux.semantic is not None:
            semantic = cached("labels", n, lambda bi, ki: aux.logits(x[bi, ki]))
        return motion, semantic

    def train_step(self, trainer: "Trainer", clip_ids, x: torch.Tensor) -> dict[str, torch.Tensor]:
        import losses.mama as mama

        cfg = trainer.cfg
        inputs, target = _channels_last(trainer, *self.split(x))
        motion, semantic = self.auxiliary_inputs(trainer, clip_ids, x)
        if trainer.channels_last:
            motion, semantic = [None if t is None else t.contiguous(memory_format=torch.channels_last)
                                for t in (motion, semantic)]
        D = trainer.discriminator  # G step first (the authors' order), D frozen during it
        D.requires_grad_(False)
        try:
            with autocast(trainer.device, trainer.amp_dtype):
                prediction, features = trainer._g_step(inputs, motion, semantic, with_features=True)
                prediction = prediction.float()
                g_adv = losses.generator_adversarial_loss(D(prediction).float())
            g_int = losses.intensity_loss(prediction, target)
            g_grad = losses.gradient_loss(prediction, target)
            zero = torch.zeros((), device=trainer.device)
            x4 = features["x4"].float()
            t_motion = (mama.triplet_loss(features["f2m"].float(), features["y4"].float(), x4, cfg.triplet_margin)
                        if features["f2m"] is not None else zero)
            t_label = (mama.triplet_loss(features["f2l"].float(), features["z4"].float(), x4, cfg.triplet_margin)
                       if features["f2l"] is not None else zero)
            g_total = (cfg.lam_int * g_int + cfg.lam_grad * g_grad + cfg.lam_adv * g_adv
                       + cfg.lam_triplet * (t_motion + t_label))
            _optimizer_step(g_total, trainer.opt_g, trainer.scaler_g)
        finally:
            D.requires_grad_(True)
        with autocast(trainer.device, trainer.amp_dtype):
            d_loss = losses.discriminator_loss(trainer._d_step(target).float(),
                                               trainer._d_step(prediction.detach()).float())
        _optimizer_step(d_loss, trainer.opt_d, trainer.scaler_d)
        return dict(g_total=g_total, g_int=g_int, g_grad=g_grad, g_adv=g_adv, g_triplet_motion=t_motion,
                    g_triplet_label=t_label, d_loss=d_loss, prediction=prediction, target=target)

    def frame_errors(self, prediction: torch.Tensor, target: torch.Tensor, discriminator: Optional[nn.Module],
                     generator: Optional[nn.Module] = None) -> dict[str, torch.Tensor]:
        """The generator's error and, from the call that made ``prediction``, the triplet hinges and the
        Destroyer's error (stage 2)."""
        from losses.mama import per_frame_mse01

        if generator is None:
            raise ValueError("MAMA's score needs the generator's last outputs")
        terms = dict(generator.last_terms)
        errors = {"generator_mse": per_frame_mse01(prediction, target)}
        restored = terms.pop("restored", None)
        if restored is not None:
            errors["destroyer_mse"] = per_frame_mse01(restored, target)
        return {**errors, **terms}

    def anomaly_values(self, psnr: list[np.ndarray], extras: dict[str, list[np.ndarray]],
                       cfg: Config) -> list[np.ndarray]:
        from config import score_weights
        from losses.mama import combined_score

        weights = score_weights(cfg)
        return [combined_score({name: values[v] for name, values in extras.items()}, weights)
                for v in range(len(psnr))]


class DestroyerMethod(F2LMMethod):
    """MAMA stage 2: train the Destroyer against the frozen F2LM (losses/mama.py: patch dropout, SSIM-weighted
    black-or-restore target; AdamW at the generator's learning rate).  Checkpoints are a_latest / a_best_auc /
    a_best_val and hold both networks (models/f2lm.MAMA); they start from a stage-1 checkpoint (--pretrained)."""

    name = "destroyer"
    trains_discriminator = False
    loss_names = ("a_loss",)
    checkpoint_names = {"latest": "a_latest", "g_best_auc": "a_best_auc", "g_best_val": "a_best_val"}

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        if cfg.val_holdout:
            raise UserError("--val_holdout selects by the generator's PSNR on held-out videos, which the Destroyer "
                            "stage never changes: drop it (stage 2's label-free checkpoint is the last, a_latest)")

    def resolve(self, cfg: Config) -> Config:
        if "auto" in (cfg.flownet, cfg.semantic):
            raise UserError("--stage=destroyer takes its inputs from the stage-1 checkpoint: pass "
                            "--pretrained=g_best_auc_<dataset> (or --resume=a_latest_<dataset>)")
        return cfg

    def train_step(self, trainer: "Trainer", clip_ids, x: torch.Tensor) -> dict[str, torch.Tensor]:
        import losses.mama as mama

        inputs, target = _channels_last(trainer, *self.split(x))
        motion, semantic = self.auxiliary_inputs(trainer, clip_ids, x)
        with torch.no_grad(), autocast(trainer.device, trainer.amp_dtype):
            clean = self.f2lm(trainer)(inputs, motion, semantic).float()
        noisy = mama.corrupt_patches(clean)
        with autocast(trainer.device, trainer.amp_dtype):
            output = trainer._g_step(destroy=_channels_last(trainer, noisy)[0]).float()
        a_loss = mama.destroyer_loss(output, clean, noisy, target)
        _optimizer_step(a_loss, trainer.opt_g, trainer.scaler_g)
        return dict(a_loss=a_loss, prediction=clean, target=target)


METHODS: dict[str, Any] = {"prediction": PredictionMethod(), "skipganomaly": SkipGANomalyMethod(),
                           "f2lm": F2LMMethod(), "destroyer": DestroyerMethod()}


def method_for(cfg: Config):
    """The method of ``cfg.model`` (and ``cfg.stage``), after checking that the config suits it."""
    from models import method_name

    method = METHODS["destroyer" if cfg.stage == "destroyer" else method_name(cfg.model)]
    method.check(cfg)
    return method
