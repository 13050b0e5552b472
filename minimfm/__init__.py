"""minimfm: one small transformer that reads and writes both text and images.

Three ways to generate the image part on one shared backbone: autoregressive VQ codes (Chameleon), masked
VQ codes decoded in parallel (Show-o, MaskGIT), and diffusion over continuous latents (Transfusion).
"""
__version__ = "0.1.0"
