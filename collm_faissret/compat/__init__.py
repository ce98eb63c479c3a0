"""Coming from CoLLM / CoLLM-FaissRet: their YAML configs and checkpoints, read here.

collm_config      their ``train_configs/*.yaml`` -> our schema (``collm-prepare config``)
collm_checkpoint  their ``checkpoint_best.pth`` parameter names -> ours (``model.ckpt``)
"""
