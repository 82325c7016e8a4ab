"""The model registry: name -> class, for the CLI and for loading checkpoints."""
from aevb.model import LatentVariableModel
from aevb.models.cvae import CVAE
from aevb.models.fa import FactorAnalysis
from aevb.models.gmvae import GMVAE
from aevb.models.vae import VAE
from aevb.models.vrnn import VRNN

MODELS: dict[str, type[LatentVariableModel]] = {cls.name: cls for cls in (FactorAnalysis, VAE, CVAE, GMVAE, VRNN)}


def from_checkpoint(checkpoint: dict) -> LatentVariableModel:
    """Rebuild a model from ``LatentVariableModel.checkpoint()``."""
    cls = MODELS[checkpoint["model"]]
    model = cls(cls.Config(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model
