"""aevb: latent variable models fitted with Auto-Encoding Variational Bayes, understood through EM."""
import importlib.metadata

try:
    __version__ = importlib.metadata.version("aevb")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"
