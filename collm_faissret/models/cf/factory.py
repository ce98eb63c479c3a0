"""The one way a collaborative model is made: ``build_cf``.

Every route that needs a CF model (baseline training, the projector's input in
stage 2, retrieve-then-rank, cold start) calls it with the config's
``model.rec_config`` section, so they agree on how the class is found (the
``cf_model`` registry), where its shape comes from (a ``cf_model.pth`` when
``rec_config.pretrained_path`` names one: its name, rec_config and table sizes;
the data and the section otherwise), whether it reads the training
interactions first (the class's ``fits_data``) and how weights are loaded.
"""
from ... import registry
from ...checkpoint import load, load_model_weights
from ...errors import ConfigError
from .cold_start import with_cold_start
from .weights import CFWeightsError, check_fits, load_into, read_cf_weights, resolve_section

DEFAULT_CF = "MF"  # the projector's CF model when neither the config nor a weight file names one


def build_cf(rec_cfg, data, device, name=None, name_key="model.rec_model", ckpt=None, need_weights=None,
             path_key="model.rec_config.pretrained_path"):
    """A CF model for ``data`` on ``device``.

    rec_cfg: the ``model.rec_config`` section. With ``pretrained_path`` the file
    decides the model (name, rec_config, table sizes; the section's keys must
    agree with it) and the data's ids must fit its tables; without it, ``name``
    (default MF) and the section do, sized by the data.
    name: the registry name the config gives (``model.arch`` for a baseline,
    ``model.rec_model`` for the projector's input; None: the file's), named in
    errors as ``name_key``. ckpt: a run checkpoint whose ``model`` entry holds
    this model's weights (a baseline's ``model.ckpt``), loaded last.
    need_weights: a reason why random weights are useless here; without
    ``pretrained_path`` it becomes the ConfigError. path_key: the config key that gave
    ``pretrained_path``, as errors reading the file name it.
    """
    path = rec_cfg.get("pretrained_path")
    if need_weights and not path:
        raise ConfigError(f"{need_weights}: set model.rec_config.pretrained_path (a baseline_train.py cf_model.pth)")
    if path:
        weights = read_cf_weights(path, path_key)
        if name and name != weights.name:
            raise CFWeightsError(f"{name_key}: the config says {name}, {path} holds {weights.name} weights")
        cls = registry.get("cf_model", weights.name)
        section = resolve_section(cls, rec_cfg, weights)
        check_fits(weights, data.n_users, data.n_items)
        model = cls(weights.n_users, weights.n_items, section)
        load_into(model, weights)  # a graph model's graph comes with its weights
    else:
        cls = registry.get("cf_model", name or DEFAULT_CF)
        model = cls(data.n_users, data.n_items, rec_cfg)
        if cls.fits_data:
            model.fit_data(data)
    if ckpt:
        load_model_weights(model, load(ckpt, "model.ckpt")["model"], ckpt)
    return model.to(device)


def cold_start_view(cf, data, cs, index_cfg, titles=None):
    """``cf`` with borrowed vectors for cold users/items when ``cs.enabled`` (the
    ``model.cold_start`` section; neighbour indexes built with ``index_cfg``, an
    ``IndexSettings`` of the ``retrieval`` section; ``titles``: item id -> title, default
    every title in ``data``); ``cf`` itself otherwise."""
    return with_cold_start(cf, data, cs, index_cfg, titles)


def attach_scoring_view(model, data, cs, index_cfg):
    """A CF model being trained scores evaluation rows through its cold-start view
    (when ``cs.enabled``), recomputed whenever the weights changed."""
    if cs.enabled:
        model.scoring_view = CachedColdStart(data, cs, index_cfg)
        model.history_len = max(model.history_len, cs.history_len)  # what the view reads
    return model


class CachedColdStart:
    """model -> its cold-start view, rebuilt only when the weights changed (an optimizer
    step or a loaded checkpoint): what a CF model being trained scores evaluation rows with."""

    def __init__(self, data, cs, index_cfg):
        self.data, self.cs, self.index_cfg, self.key, self.view = data, cs, index_cfg, None, None

    def __call__(self, model):
        key = tuple((p.data_ptr(), p._version) for p in model.parameters())
        if key != self.key:
            self.key, self.view = key, cold_start_view(model, self.data, self.cs, self.index_cfg)
        return self.view
