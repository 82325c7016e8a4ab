"""The tutorial's published numbers that a fit shows as well as ``aevb reproduce`` (which holds the rest)."""

# The tutorial's published VRNN test ELBOs on binarized MNIST, epochs 1-7 (its code draws z_t with sample()).
TUTORIAL_VRNN_TEST_ELBO = (-93.0, -85.5, -81.2, -79.9, -79.2, -78.3, -78.5)
