"""Streamlit panels of the review app; the logic they call lives in :mod:`mil_cyto.review`."""
