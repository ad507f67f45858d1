"""Runtime resources shared by the pipeline and the query side.

Every module here is plain Python except :mod:`resources.dagster_resources`, the Dagster
face of these objects, which only the pipeline imports: the query side (the Streamlit page
and the CLI) never loads Dagster.
"""
