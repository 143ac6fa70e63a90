"""`braas-hpc dashboard`: a page on this computer that shows every job and interactive session live.

The page is served on 127.0.0.1 only, to whoever holds the random token of this run (core of the
safety: `app.py`). One refresher (`refresher.py`) asks each cluster once per refresh, on the CLI's
back-off, and hands the same snapshot (`snapshot.py`) to every open page; it also drives every group
(one film over several clusters) while a page is open, as `braas-hpc wait GROUP` does. The buttons call
the same core functions as the CLI verbs (cancel, resubmit, download; a group has no resubmit).

Needs the `dashboard` extra (starlette and uvicorn); nothing in the core imports this package.
"""

EXTRA_HINT = "the dashboard needs the `dashboard` extra: pip install 'braas-hpc[dashboard]'"
