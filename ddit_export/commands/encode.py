"""``ddit-export encode``: prompts -> the text embeddings a service hands the C++ runtime (``ddit-run --states
states.npy --pooled pooled.npy``, ``ddit_request.states/pooled``)."""
import click


@click.command()
@click.option("--prompt", "prompts", multiple=True, help="Prompt (repeat for a batch).")
@click.option("--bundle", type=click.Path(), help="The bundle the embeddings are for: its text length and "
                                                  "dimensions are checked; a pixel bundle's own word encoder "
                                                  "encodes (no --weights then).")
@click.option("--weights", type=click.Path(), help="Local FLUX.1-dev diffusers folder: its CLIP and T5 encode "
                                                   "(needed for FLUX, without or with a kind flux --bundle).")
@click.option("--text-len", type=int, help="T5 tokens without --bundle (default 512; a bundle's own length "
                                           "otherwise).")
@click.option("--out", type=click.Path(), required=True, help="Folder for states.npy and pooled.npy.")
def command(prompts, bundle, weights, text_len, out):
    """Write states.npy (batch, text_len, joint_dim) and pooled.npy (batch, pooled_dim), float32."""
    from ..runtime.encode import encode_to_folder

    states, pooled = encode_to_folder(list(prompts), out, bundle=bundle, weights=weights, text_len=text_len)
    click.echo(f"wrote {out}/states.npy {tuple(states.shape)} and {out}/pooled.npy {tuple(pooled.shape)} (float32)")
