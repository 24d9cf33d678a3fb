"""Start the desktop application: ``python main.py [project.kpproj.json]``."""

from annotator.gui.app import run_app

if __name__ == "__main__":
    raise SystemExit(run_app())
