"""aevb: latent variable models fitted with Auto-Encoding Variational Bayes, understood through EM."""
