"""sgrec-ray: Ray-native semantic-aware generative recommendation (S-GRec)."""

__version__ = "0.1.0"
