"""The REST API: a thin FastAPI layer over ``registry``."""
