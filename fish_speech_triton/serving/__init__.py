"""Serving-side code shared by the Triton models, the repository builder and the tools."""
