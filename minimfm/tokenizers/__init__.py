"""Tokenizers: words for text (text.py), discrete codes (vq.py) and continuous latents (latent.py) for images."""
