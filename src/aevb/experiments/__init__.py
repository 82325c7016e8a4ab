"""The built-in models' hooks into the one fit path (``aevb.fitting.Hooks``): what each adds of its own.

* ``fa``: the tutorial's synthetic data, exact evidence per step, the exact-EM reference, Figures 2 and 3;
* ``vae`` (VAE and CVAE): the tutorial's settings and its decoder-parameter figure;
* ``gmvae``: clustering metrics, the temperature schedule, generations per cluster;
* ``vrnn``: generation row by row (a grid and an animation), the tutorial's published curve.
"""
