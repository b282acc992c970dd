"""The operator's web app (``python app.py``): server.py (routes), jobs.py (background jobs), files.py (confined
folders and uploads), adapt.py (the adapt-to-this-camera job) and static/ (the page).  See docs/app.md."""
