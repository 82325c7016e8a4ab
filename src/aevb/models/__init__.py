"""The built-in models, one file each: ``fa``, ``vae``, ``cvae``, ``gmvae``, ``vrnn`` (``aevb.registry`` finds them)."""
