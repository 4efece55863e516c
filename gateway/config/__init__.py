"""Configuration: the settings model and the reference generated from it."""
