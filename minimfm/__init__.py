"""minimfm: one small transformer that reads and writes both text and images.

Four ways to generate the image part on one shared backbone: autoregressive VQ codes (Chameleon), masked
VQ codes decoded in parallel (Show-o, MaskGIT), diffusion over continuous latents (Transfusion), and masked
autoregression over continuous latents with a per-token diffusion head (MAR). The registry: minimfm/modes/.
"""
__version__ = "0.1.0"
