"""``collm-prepare config --from-collm IN.yaml --out OUT.yaml``: a CoLLM / CoLLM-FaissRet
training config (``model.arch: mini_gpt4rec_v2``) rewritten in this project's schema.

Prints one line per key it drops or changes, and why; a key it does not know
stops it with one line naming the key (exit status 2). The written file is
validated against the schema first and then moved into place, so a refused
conversion leaves no output. See docs/coming_from_collm.md.
"""
import argparse
import os
import sys
import tempfile


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="collm-prepare config", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-collm", required=True, metavar="IN.yaml", help="CoLLM config (train_configs/*.yaml)")
    ap.add_argument("--out", required=True, metavar="OUT.yaml", help="converted config to write")
    ap.add_argument("--prompt-dir", default="prompt",
                    help="this checkout's prompt/ directory; converted prompt paths point into it (default: prompt)")
    ap.add_argument("--force", action="store_true", help="replace an existing OUT.yaml")
    return ap.parse_args(argv)


def convert_file(src: str, out: str, prompt_dir: str):
    """Convert ``src`` into ``out`` (validated, then moved into place); return the notes."""
    # Deferred: validation loads torch, which collm-prepare's data commands never need.
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ..compat.collm_config import ConvertError, convert
    from ..config_loader import ConfigError, load_config

    if not os.path.isfile(src):
        raise ConvertError(f"--from-collm: file not found: {src}")
    try:  # omegaconf's loader, as CoLLM's: it reads 1e-3 as a float, plain YAML 1.1 as a string
        raw = OmegaConf.to_container(OmegaConf.load(src))
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as err:
        raise ConvertError(f"{src}: cannot parse YAML: {str(err).splitlines()[0]}") from None
    cfg, notes = convert(raw, prompt_dir)
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(out) + ".", suffix=".yaml", dir=directory)
    os.close(fd)
    try:
        OmegaConf.save(OmegaConf.create(cfg), tmp)
        try:
            load_config(tmp)
        except ConfigError as err:
            raise ConvertError(f"converted config does not validate: {str(err).replace(tmp, out)}") from None
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    from ..compat.collm_config import ConvertError

    if os.path.exists(args.out) and not args.force:
        print(f"error: {args.out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    try:
        notes = convert_file(args.from_collm, args.out, args.prompt_dir)
    except ConvertError as err:
        print(f"error: {args.from_collm}: {err}", file=sys.stderr)
        return 2
    for line in notes:
        print(line)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
