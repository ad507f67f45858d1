"""The query side: the one query service (``service.py``) and the Streamlit search page (``app.py``); no Dagster here."""
