"""Self-distillation of the coarse-size adapters (``ddit-export adapt``).

Teacher: the frozen model at the fine size (``size=1``, the untouched trunk). Student: the same
:class:`~ddit_export.models.flux.MultiPatchFlux` at every coarse size k of ``--sizes``; only
``adapter_parameters()`` (stems + LoRA) train, the trunk is shared, frozen and never written. Loss per size:
``MSE(v_student(z_t, k), v_teacher(z_t, 1))``; the sizes' losses are summed, so every step trains every size on
the same batch.

No data set is needed. The training states z_t are the model's own sampling trajectories: the fine-only Euler
sampler runs on prompts (flux-mini and other pixel models: captions of :func:`ddit_export.zoo.scenes.make_batch`;
any model: ``--prompts FILE``, one prompt a line) and every step's latent, timestep and teacher velocity are
cached in ``WORK/trajectories/`` (safetensors). ``--coarse-mix F`` samples a fraction F of the trajectories
with random coarse steps (training-free adapters) after the warm-up, so the student also sees the slightly
off-trajectory states that follow a coarse step; the teacher velocity is always the fine model's at that state.
Because the teacher is cached, one training step is one student forward/backward per coarse size.

Run it (``--minutes`` and ``--steps`` are totals over resumed runs; training time only, sampling excluded)::

    ddit-export adapt --model flux-mini --minutes 20 --lr 5e-3 --threads auto   # writes the model folder's adapters
    ddit-export adapt --model my-pixel-folder --steps 2000 --rank 8 --prompts prompts.txt

FLUX.1-dev on a GPU (bf16 trunk; adapter weights and Adam moments stay fp32 under autocast)::

    ddit-export adapt --model flux --weights /models/FLUX.1-dev --device cuda --dtype bf16 \\
        --prompts prompts.txt --batch 4 --lr 1e-4 --minutes 240 --work runs/adapt-flux --eval-images 4
    ddit-export generate --model flux --weights /models/FLUX.1-dev --adapters runs/adapt-flux/ddit_adapters.safetensors

On flux-mini (width 128) 200-step probes put the useful learning rate at 3e-3..1e-2 (3e-2 diverges; 1e-3 is
3x slower) and found rank 8 and rank 32 equal; the new stems do most of the early work (at k=4 a coarse token
packs 192 values into 128 dims). For a 12B FLUX.1-dev start at lr 1e-4, as the paper's video runs did.

Each cached FLUX state at 1024x1024 is ~1 MB (latent + teacher velocity, 4096 tokens x 64 channels, bf16), so
200 prompts x 50 steps is ~10 GB on disk and in host memory; T5 encodings of the prompts are cached in host
memory (4 MB each). FLUX's default output goes to ``WORK/ddit_adapters.safetensors`` (pass ``--out`` to put it
into ``DIR/transformer/`` where ``load_model`` finds it by itself).

``WORK`` (default ``runs/adapt-<model>``) holds ``trajectories/``, ``loss.csv`` (per-size training loss),
``eval.csv`` (per-size loss on held-out trajectories at every checkpoint), ``quality.csv`` (PSNR of DDiT
generations against fine-only, before and after) and ``ckpt/`` (``adapters.safetensors``, ``optim.safetensors``
with the Adam moments, ``state.json`` with step, time and settings). A checkpoint is written every
``--ckpt-minutes``, at the end and on Ctrl-C/SIGTERM; re-running the same command resumes. Batches are a pure
function of (seed, step), so with a step budget a resumed run ends bit-identical to an uninterrupted one; with a
time budget the learning-rate decay follows wall time and is not reproducible. The final adapters are written
atomically (temp file + rename) only when the budget is complete.
The package follows those seams: :mod:`.student` (the model and its fresh adapters), :mod:`.prompts`,
:mod:`.trajectories` (sampling and the cache), :mod:`.losses` (objective, learning rate, batches),
:mod:`.checkpoint` (resumable state, final adapters), :mod:`.logs` (CSV logs), :mod:`.report` (PSNR against
fine-only) and :mod:`.train` (the run itself).
"""
from ..settings import AdaptSettings
from .checkpoint import read_checkpoint_state, write_adapters
from .logs import read_loss_csv
from .prompts import PromptBank, read_prompts, scene_prompts, training_prompts
from .report import compare_to_fine, quality_schedules
from .student import default_out, default_work, fingerprint, load_student, model_folder
from .train import AdaptResult, adapt
from .trajectories import Trajectories, build_trajectories

__all__ = ["adapt", "AdaptResult", "AdaptSettings", "compare_to_fine", "scene_prompts", "read_loss_csv",
           "load_student", "read_prompts", "training_prompts", "PromptBank", "Trajectories", "build_trajectories",
           "quality_schedules", "read_checkpoint_state", "write_adapters", "default_out", "default_work",
           "fingerprint", "model_folder"]
