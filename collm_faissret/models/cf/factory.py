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
from ...errors import ConfigError
from .cold_start import with_cold_start


def build_cf(cfg, data, device, name=None, cold_start=False, need_weights=None):
    """A CF model for ``data`` on ``device``.

    name: registry name (default ``model.rec_model``, the projector's input).
    When it is ``model.arch`` (the CF model is the whole model: a baseline run),
    ``model.ckpt`` holds its weights and is loaded after
    ``rec_config.pretrained_path``, and with ``model.cold_start.enabled`` the
    model gets a ``scoring_view`` (evaluation scores cold rows with borrowed
    vectors computed from the weights as they are then).
    cold_start: return the cold-start view itself (for a model whose weights no
    longer change). need_weights: a reason why random weights are useless here;
    without ``rec_config.pretrained_path`` it becomes the ConfigError.
    """
    m = cfg.model
    cls = registry.get("cf_model", name or m.rec_model)
    if need_weights and not m.rec_config.pretrained_path:
        raise ConfigError(f"{need_weights}: set model.rec_config.pretrained_path (a baseline_train.py cf_model.pth)")
    model = cls(data.n_users, data.n_items, m.rec_config)
    if cls.fits_data:
        model.fit_data(data)
    if m.rec_config.pretrained_path:
        model.load_pretrained(m.rec_config.pretrained_path)
    is_main = cls.name == m.arch
    if is_main and m.ckpt:
        load_model_weights(model, load(m.ckpt, "model.ckpt")["model"], m.ckpt)
    model = model.to(device)
    if cold_start:
        return cold_start_view(model, cfg, data)
    if is_main and m.cold_start.enabled:
        model.scoring_view = CachedColdStart(cfg, data)
        model.history_len = max(model.history_len, m.cold_start.history_len)  # what the view reads
    return model


def cold_start_view(cf, cfg, data):
    """``cf`` with borrowed vectors for cold users/items when ``model.cold_start.enabled``
    (its neighbour indexes built with the ``retrieval.*`` keys); ``cf`` itself otherwise."""
    from ...config import index_settings

    return with_cold_start(cf, data, cfg.model.cold_start, index_settings(cfg))


class CachedColdStart:
    """model -> its cold-start view, rebuilt only when the weights changed (an optimizer
    step or a loaded checkpoint): what a CF model being trained scores evaluation rows with."""

    def __init__(self, cfg, data):
        self.cfg, self.data, self.key, self.view = cfg, data, None, None

    def __call__(self, model):
        key = tuple((p.data_ptr(), p._version) for p in model.parameters())
        if key != self.key:
            self.key, self.view = key, cold_start_view(model, self.cfg, self.data)
        return self.view
