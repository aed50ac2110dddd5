"""`vlaforge ui`: the local web app (FastAPI + uvicorn; plain HTML and JS served from `static/`)."""
