"""The one way a collaborative model is made: ``build_cf``.

Every route that needs a CF model (baseline training, the projector's input in
stage 2, retrieve-then-rank, cold start) calls it, so they agree on how the
class is found (the ``cf_model`` registry), where its sizes come from (the
data), whether it reads the training interactions first (the class's
``fits_data``) and how weights are loaded (``rec_config.pretrained_path``, then
a run checkpoint on top).
"""
from ... import registry
from ...checkpoint import load, load_model_weights
from ...config import index_settings
from .cold_start import with_cold_start


def build_cf(cfg, data, device, name=None, ckpt=None, cold_start=False):
    """A CF model for ``data`` on ``device``.

    name: registry name (default ``model.rec_model``). ckpt: a run checkpoint
    whose ``model`` state is this CF model's (a baseline run's), loaded after
    ``rec_config.pretrained_path``. cold_start: wrap the model for borrowed
    cold-user/item vectors when ``model.cold_start.enabled`` (its weights must
    not change afterwards: the borrowed tables are computed from them once).
    """
    m = cfg.model
    cls = registry.get("cf_model", name or m.rec_model)
    model = cls(data.n_users, data.n_items, m.rec_config)
    if cls.fits_data:
        model.fit_data(data)
    if m.rec_config.pretrained_path:
        model.load_pretrained(m.rec_config.pretrained_path)
    if ckpt:
        load_model_weights(model, load(ckpt, "model.ckpt")["model"], ckpt)
    model = model.to(device)
    return cold_start_view(model, cfg, data) if cold_start else model


def cold_start_view(cf, cfg, data):
    """``cf`` with borrowed vectors for cold users/items when ``model.cold_start.enabled``
    (its neighbour indexes built with the ``retrieval.*`` keys); ``cf`` itself otherwise."""
    return with_cold_start(cf, data, cfg.model.cold_start, index_settings(cfg))
