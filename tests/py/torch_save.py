"""loraslab.torch.save_merged on a real PEFT model, wrapped as asked, at any rank count.

Run under torchrun (callbacks, positional writes) or mpiexec (MPI; torch.distributed is started
from the launcher's PMI variables), with gloo on the CPU or NCCL on one GPU:
    torch_save.py --out DIR [--wrap fsdp2|ddp|none] [--model qwen2|gpt2] [--dora] ...
Checks, on every rank or rank 0: the model's parameters bit-identical before and after; every
tensor of the converted output against PEFT's own merge_and_unload() (within 1 ulp, at least
99.99% exact, no tensor missing or extra); transformers loads the output and its logits match
PEFT's merged model; a bad call raises loraslab.Error on every rank and leaves nothing.  Prints
PASSED/FAILED and exits accordingly."""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.distributed as dist


def init() -> tuple[int, int]:
    if "RANK" not in os.environ:  # mpiexec: torch's ranks from the launcher's
        for rank_var, size_var in (("PMI_RANK", "PMI_SIZE"),
                                   ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
            if rank_var in os.environ:
                os.environ["RANK"], os.environ["WORLD_SIZE"] = (os.environ[rank_var],
                                                                os.environ[size_var])
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", os.environ.get("LSL_TEST_PORT", "29577"))
    # with NCCL for the GPU, gloo beside it for the test's own CPU-tensor collectives
    backend = "cuda:nccl,cpu:gloo" if os.environ.get("LSL_TEST_DEVICE") == "cuda" else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def build(args: argparse.Namespace) -> tuple:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config
    torch.manual_seed(args.seed)  # the same model on every rank
    if args.model == "gpt2":
        cfg = GPT2Config(n_embd=48, n_head=4, n_layer=2, vocab_size=1001, n_positions=64)
        targets = ["c_attn", "c_proj", "c_fc"]
    else:
        cfg = Qwen2Config(hidden_size=72, num_attention_heads=6, num_key_value_heads=2,
                          intermediate_size=200, vocab_size=1001, num_hidden_layers=2,
                          max_position_embeddings=64, tie_word_embeddings=args.tie)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if args.embed:
        targets.append("embed_tokens")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    for p in model.parameters():  # biases and norms away from their init values
        p.data += 0.01 * torch.randn_like(p, dtype=torch.float32).to(p.dtype)
    lcfg = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=targets,
                      init_lora_weights=False, use_dora=args.dora, use_rslora=args.rslora,
                      fan_in_fan_out=args.model == "gpt2", lora_bias=args.lora_bias,
                      modules_to_save=["lm_head"] if args.modules_to_save else None,
                      rank_pattern={"c_proj" if args.model == "gpt2" else "k_proj": 2},
                      alpha_pattern={"c_fc" if args.model == "gpt2" else "v_proj": 5})
    peft = get_peft_model(model, lcfg, adapter_name=args.adapter)
    if args.second_adapter:  # only the named adapter is merged
        peft.add_adapter("other", LoraConfig(r=4, target_modules=targets[:2],
                                             init_lora_weights=False,
                                             fan_in_fan_out=args.model == "gpt2"))
        peft.set_adapter(args.adapter)
    if args.modules_to_save:
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "modules_to_save" in n:
                    p.add_(0.05)
    if args.device == "cuda":
        peft = peft.cuda()
    return peft, cfg


def verl_placement(world: int):
    """verl's FSDP2 placement (verl/utils/fsdp_utils.py get_shard_placement_fn): each parameter
    sharded along its first dimension the world divides, else Shard(0); so a weight whose rows
    do not divide gets Shard(1), and so may lora_A or lora_B."""
    from torch.distributed.tensor import Shard

    def fn(param: torch.Tensor):
        for i, n in enumerate(param.shape):
            if n % world == 0:
                return Shard(i)
        return Shard(0)
    return fn


def wrap(peft: torch.nn.Module, how: str, device: str, uop: bool = False,
         mixed: bool = False, hsdp: bool = False, offload: bool = False,
         verl: bool = False, verl_utils: bool = False) -> torch.nn.Module:
    """mixed: compute in fp16 (MixedPrecision); the shards the save reads stay at their own
    precision between steps.  verl: FSDP2 with verl's shard placement (the rule, copied);
    verl_utils: verl's own functions (installed verl): get_shard_placement_fn for FSDP2,
    get_fsdp_wrap_policy(is_lora=True, min_num_params=0) for FSDP1."""
    if how == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        world = dist.get_world_size()
        mesh = init_device_mesh(device, (2, world // 2), mesh_dim_names=("replicate", "shard")) \
            if hsdp else init_device_mesh(device, (world,))
        kw = {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.float16)} if mixed else {}
        if verl_utils:
            from verl.utils.fsdp_utils import get_shard_placement_fn
            kw["shard_placement_fn"] = get_shard_placement_fn(mesh.size(mesh.ndim - 1))
        elif verl:
            kw["shard_placement_fn"] = verl_placement(mesh.size(mesh.ndim - 1))
        inner = peft.base_model.model
        layers = inner.transformer.h if hasattr(inner, "transformer") else inner.model.layers
        for layer in layers:
            fully_shard(layer, mesh=mesh, **kw)
        fully_shard(peft, mesh=mesh, **kw)
        return peft
    if how in ("tp", "fsdp2-tp"):
        # tensor parallelism: the base Linear layers' weights become DTensors, column-parallel
        # ones Shard(0) rows, row-parallel ones Shard(1); alone on a 1-D mesh, or on the "tp"
        # dimension of a (dp, tp) mesh with FSDP2 over "dp" (rows in _StridedShard, the LoRA
        # factors sharded over "dp" only)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                       parallelize_module)
        world = dist.get_world_size()
        mesh = init_device_mesh(device, (world,)) if how == "tp" else \
            init_device_mesh(device, (world // 2, 2), mesh_dim_names=("dp", "tp"))
        plan = {}
        for n, m in peft.named_modules():
            leaf = n.rsplit(".", 2)
            if n.endswith(".base_layer") and isinstance(m, torch.nn.Linear):
                row = leaf[-2] in ("o_proj", "down_proj")
                plan[n] = RowwiseParallel() if row else ColwiseParallel()
        parallelize_module(peft, mesh if how == "tp" else mesh["tp"], plan)
        if how == "fsdp2-tp":
            from torch.distributed.fsdp import fully_shard
            for layer in peft.base_model.model.model.layers:
                fully_shard(layer, mesh=mesh["dp"])
            fully_shard(peft, mesh=mesh["dp"])
        return peft
    if how == "fsdp1":
        from peft.utils.other import fsdp_auto_wrap_policy
        from torch.distributed.fsdp import CPUOffload, FullyShardedDataParallel, MixedPrecision
        from torch.distributed.fsdp import ShardingStrategy
        kw = {}
        if hsdp:  # HYBRID_SHARD: shard within a group of world / 2, replicate across two
            from torch.distributed.device_mesh import init_device_mesh
            world = dist.get_world_size()
            kw = {"sharding_strategy": ShardingStrategy.HYBRID_SHARD,
                  "device_mesh": init_device_mesh(device, (2, world // 2))}
        # PEFT's policy (or verl's): the LoRA modules (fp32) are units of their own beside the
        # bf16 base
        policy = fsdp_auto_wrap_policy(peft)
        if verl_utils:
            from verl.utils.fsdp_utils import get_fsdp_wrap_policy
            policy = get_fsdp_wrap_policy(peft, config={"min_num_params": 0}, is_lora=True)
        return FullyShardedDataParallel(
            peft, use_orig_params=uop, device_id=torch.device(device), **kw,
            auto_wrap_policy=policy,
            mixed_precision=MixedPrecision(param_dtype=torch.bfloat16) if mixed else None,
            cpu_offload=CPUOffload(offload_params=True) if offload else None)
    if how == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(peft)
    return peft


def ulps(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    """(worst ulp distance, fraction exact) of two tensors of one float dtype."""
    if not a.dtype.is_floating_point:
        return (0 if torch.equal(a, b) else 1 << 30), float(torch.equal(a, b))
    it = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
          torch.float64: torch.int64}[a.dtype]

    def ordered(x: torch.Tensor) -> torch.Tensor:
        i = x.contiguous().view(it).to(torch.int64)
        top = 1 << (8 * x.element_size() - 1)
        return torch.where(i < 0, -(i + top), i)
    d = (ordered(a) - ordered(b)).abs()
    return int(d.max().item()) if d.numel() else 0, float((d == 0).float().mean().item()) \
        if d.numel() else 1.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--wrap", default="fsdp2", choices=["fsdp2", "fsdp1", "ddp", "none", "tp",
                                                        "fsdp2-tp"])
    ap.add_argument("--model", default="qwen2", choices=["qwen2", "gpt2"])
    ap.add_argument("--lora-r", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adapter", default="default")
    ap.add_argument("--stripe-mib", type=int, default=0)  # save_merged(stripe_size=): alignment
    for flag in ("dora", "rslora", "lora-bias", "embed", "modules-to-save", "tie",
                 "second-adapter", "use-orig-params", "expect-refusal", "mixed-precision",
                 "step", "hsdp", "cpu-offload", "verl-placement", "verl-utils"):
        ap.add_argument("--" + flag, action="store_true")
    args = ap.parse_args()
    args.device = os.environ.get("LSL_TEST_DEVICE", "cpu")
    rank, size = init()
    import loraslab
    import loraslab.torch as lt
    fails: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            fails.append(what)
            print(f"[rank {rank}] FAIL: {what}", file=sys.stderr)

    peft, _ = build(args)
    ref = copy.deepcopy(peft).merge_and_unload()  # PEFT's own merge, before any wrapper
    ref.eval()  # no dropout in the logits compared
    late = "transformer.ln_f.weight" if args.model == "gpt2" else "model.norm.weight"
    bump = 1.0 / 64
    # the update queued on the stream just before the save (below)
    stream_check = args.device == "cuda"
    if stream_check:
        with torch.no_grad():
            ref.get_parameter(late).add_(bump)
    ref_sd = {k: v.detach().cpu() for k, v in ref.state_dict().items()}
    if getattr(ref.config, "tie_word_embeddings", False):
        ref_sd.pop("lm_head.weight", None)  # save_pretrained drops the tied copy
    model = wrap(peft, args.wrap, args.device, args.use_orig_params, args.mixed_precision,
                 args.hsdp, args.cpu_offload, args.verl_placement, args.verl_utils)
    if args.verl_placement or args.wrap in ("tp", "fsdp2-tp") or (args.verl_utils and
                                                                   args.wrap == "fsdp2"):
        # a case only where some parameters are in columns
        from torch.distributed.tensor import Shard
        cols = sorted(n for n, p in model.named_parameters()
                      if any(isinstance(q, Shard) and q.dim == 1
                             for q in getattr(p, "placements", ())))
        check(bool(cols), "no parameter in Shard(1)")
        strided = sum(1 for p in model.parameters()
                      if any("Strided" in type(q).__name__ for q in getattr(p, "placements", ())))
        check(strided > 0 or args.wrap != "fsdp2-tp", "FSDP2 over TP made no _StridedShard")
        if rank == 0:
            print(f"torch_save: {len(cols)} parameters in Shard(1), {strided} in _StridedShard, "
                  f"e.g. {cols[:3]}")
    if args.step:  # a forward and backward first, as a training job saves between steps
        ids = (torch.arange(1, 17).reshape(2, 8) * 37 % 1001).to(args.device)
        model(input_ids=ids).logits.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    def local(p: torch.Tensor) -> torch.Tensor:
        return (p.to_local() if hasattr(p, "to_local") else p).detach().clone()
    before = {n: local(p) for n, p in model.named_parameters()}
    path = os.path.join(args.out, "merged.h5")
    if args.expect_refusal:  # refused by name on every rank, before anything is written
        try:
            lt.save_merged(model, path, overwrite=True, quiet=rank != 0)
            check(False, "the save was accepted")
        except loraslab.Error as e:
            check(e.name == "LSL_ERR_UNSUPPORTED", f"refusal: {e}")
            if rank == 0:
                print(f"torch_save: refused as expected: {e.message[:150]}")
        dist.barrier()
        check(not os.path.exists(path), "the refused call left a file")
        return finish(rank, fails)
    if stream_check:
        # Work queued on torch's stream right before the save: a slow matmul, then an update of
        # a weight.  The file must hold the updated weight (the library waits on the stream).
        x = torch.randn(4096, 4096, device="cuda")
        for _ in range(8):
            x = torch.tanh(x @ x)
        inc = bump + 0 * x[0, 0]  # waits for the matmuls on the stream

        def bumped(t: torch.Tensor) -> None:  # a CPU-offloaded shard takes it from the host
            t.add_(inc.to(t.device))
        with torch.no_grad():
            if args.wrap == "fsdp1":  # the weight's piece of its unit's flat parameter
                from loraslab.torch import _fsdp1
                for n, piece in _fsdp1.index(model, dist.get_world_size()).items():
                    if n.endswith(late):
                        bumped(piece.local)
            for n, p in model.named_parameters():
                if n.endswith(late):
                    bumped(p.to_local() if hasattr(p, "to_local") else p)
        before = {n: local(p) for n, p in model.named_parameters()}
    tok = tokenizer()
    handler = hdf5_handler()
    lt.save_merged(model, path, overwrite=True, quiet=rank != 0,
                   stripe_size=args.stripe_mib << 20, tokenizer=tok)
    check(hdf5_handler() == handler, f"HDF5's error handler changed: {handler} -> {hdf5_handler()}")
    if rank == 0:  # and h5py (its own HDF5 or the library's) raises its own errors afterwards
        import h5py
        try:
            h5py.File(os.path.join(args.out, "no-such-file.h5"), "r")
            check(False, "h5py opened a missing file without an error")
        except OSError as e:
            check("no-such-file" in str(e), f"h5py's error: {e}")
    if args.stripe_mib and rank == 0:  # off Lustre a stripe size still aligns the datasets
        import h5py
        with h5py.File(path, "r") as f:
            big = [d for d in f["tensors"].values() if d.id.get_storage_size() >= 64 << 10]
            check(big and all(d.id.get_offset() % (args.stripe_mib << 20) == 0 for d in big),
                  f"datasets not aligned to --stripe-mib {args.stripe_mib}")
    after = {n: local(p) for n, p in model.named_parameters()}
    check(before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before),
          "the model's parameters changed")
    hf = os.path.join(args.out, "hf")
    lt.convert(path, hf, overwrite=True, quiet=True, max_shard_size=SHARD)
    lt.verify(hf, quiet=True)
    # The directory written in one pass: the converted archive's bytes (the same shards, headers,
    # index and serving files; loraslab.json differs by the "source" it records), and verify
    # passes on it.
    direct = os.path.join(args.out, "direct")
    lt.save_merged(model, direct, overwrite=True, quiet=True, max_shard_size=SHARD,
                   stripe_size=args.stripe_mib << 20, tokenizer=tok)
    lt.verify(direct, quiet=True)
    if rank == 0:
        check_direct(direct, hf, check, args.stripe_mib << 20)

    # A bad call: an adapter the model lacks.  Every rank raises, nothing is left.
    bad = os.path.join(args.out, "bad.h5")
    try:
        lt.save_merged(model, bad, adapter_name="no-such-adapter", quiet=True)
        check(False, "an unknown adapter was accepted")
    except loraslab.Error as e:
        check("no-such-adapter" in e.message and e.name == "LSL_ERR_UNSUPPORTED",
              f"unknown adapter: {e}")
    dist.barrier()
    check(not os.path.exists(bad), "the failed call left a file")
    # FSDP1: the motivating report's own method (summon, merge, pinned copy) on this model, where
    # the model is one it handles (no modules_to_save, embeddings, tying, DoRA, second adapter;
    # summoning an offloaded model needs an accelerator)
    plain = not (args.modules_to_save or args.embed or args.tie or args.dora or args.second_adapter
                 or (args.cpu_offload and args.device == "cpu") or args.hsdp)
    recipe = report_method(model, args.adapter) if args.wrap == "fsdp1" and plain else None

    if rank == 0:
        from safetensors.torch import load_file
        got: dict[str, torch.Tensor] = {}
        for f in sorted(os.listdir(hf)):
            if f.endswith(".safetensors"):
                got.update(load_file(os.path.join(hf, f)))
        check(got.keys() == ref_sd.keys(),
              f"tensor names differ: missing {sorted(ref_sd.keys() - got.keys())[:5]}, extra "
              f"{sorted(got.keys() - ref_sd.keys())[:5]}")
        worst, n_exact, n_all = 0, 0, 0
        for k in sorted(got.keys() & ref_sd.keys()):
            a, b = got[k], ref_sd[k]
            if a.shape != b.shape or a.dtype != b.dtype:
                check(False, f"{k}: {a.dtype}{tuple(a.shape)} vs PEFT's {b.dtype}{tuple(b.shape)}")
                continue
            u, ex = ulps(a, b)
            worst, n_exact, n_all = max(worst, u), n_exact + ex * a.numel(), n_all + a.numel()
            check(u <= 1, f"{k}: {u} ulp, {100 * ex:.3f}% exact")
        exact = n_exact / max(1, n_all)
        check(exact >= 0.9999, f"only {100 * exact:.4f}% of the elements exact")
        if recipe is not None:  # the same tensors as the file, within 1 ulp
            worst_r = 0
            for k, v in recipe.items():
                k = k if k in got or not k.startswith("model.") else k[len("model."):]
                if k == "lm_head.weight" and getattr(ref.config, "tie_word_embeddings", False):
                    continue  # the file writes a tied weight once, as save_pretrained
                if k not in got or v.shape != got[k].shape or v.dtype != got[k].dtype:
                    check(False, f"report's method: {k} not in the file, or another shape")
                    continue
                u = ulps(v, got[k])[0]
                if u > 1:
                    print(f"report-method {k}: {u} ulp", file=sys.stderr)
                worst_r = max(worst_r, u)
            check(worst_r <= 1 and len(recipe) >= len(got),
                  f"the report's method: worst {worst_r} ulp over {len(recipe)} tensors")
            print(f"torch_save: the report's summon/merge/pin method: {len(recipe)} tensors, "
                  f"worst {worst_r} ulp against the file")
        from transformers import AutoModelForCausalLM
        loaded, info = AutoModelForCausalLM.from_pretrained(direct, dtype=torch.bfloat16,
                                                            output_loading_info=True)
        check(not info["missing_keys"] and not info["unexpected_keys"],
              f"loading the directory: {info}")
        ids = torch.arange(1, 17).reshape(2, 8) * 37 % 1001
        with torch.no_grad():
            l1 = loaded(ids).logits.float()
            l2 = ref.cpu()(ids).logits.float()
        diff, top = float((l1 - l2).abs().max()), float(l2.abs().max())
        check(diff <= 0.02 * max(1.0, top), f"logits differ by {diff} (largest {top})")
        print(f"torch_save: {args.wrap} {args.model} at {size} ranks: {len(got)} tensors, worst "
              f"{worst} ulp, {100 * exact:.4f}% exact, logits max diff {diff:.2e} of {top:.2e}")
    return finish(rank, fails)


def hdf5_handler() -> tuple:
    """The automatic error handler (H5Eget_auto2) of the HDF5 that libloraslab links: the library
    silences it around its own calls only, so a job's later HDF5 errors still print."""
    import ctypes
    import loraslab
    loraslab._lib.lib()  # noqa: SLF001 - maps the library and its HDF5
    with open("/proc/self/maps") as f:
        paths = {ln.split()[-1] for ln in f if "/libhdf5" in ln and "h5py" not in ln
                 and "_hl" not in ln}
    if not paths:
        return ("no HDF5 mapped",)
    h5 = ctypes.CDLL(sorted(paths)[0])
    func, data = ctypes.c_void_p(), ctypes.c_void_p()
    h5.H5Eget_auto2.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    rc = h5.H5Eget_auto2(0, ctypes.byref(func), ctypes.byref(data))  # 0: H5E_DEFAULT
    return (rc, func.value, data.value)


# shards of a few per model: the index, and tensors landing in different files
SHARD = "150KB"


def tokenizer():
    """A small tokenizer built here (no download) with a chat template: its files must reach
    the directory and load back."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["[UNK]", "<s>", "</s>", "hello", "world"])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", bos_token="<s>",
                                  eos_token="</s>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tok


def check_direct(direct: str, hf: str, check, stripe: int) -> None:
    """The one-pass directory against the converted archive, file by file (with a stripe
    size, which convert was not given, the shards' data starts on its multiples instead and the
    tensors are compared)."""
    import filecmp
    import json
    import struct
    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    a, b = sorted(os.listdir(direct)), sorted(os.listdir(hf))
    check(a == b, f"direct and converted directories hold different files: {a} vs {b}")
    shards = [f for f in a if f.endswith(".safetensors")]
    check(len(shards) > 1 and "model.safetensors.index.json" in a, f"one shard only: {a}")
    for f in shards if stripe else []:
        with open(os.path.join(direct, f), "rb") as fh:
            start = 8 + struct.unpack("<Q", fh.read(8))[0]
        check(start % stripe == 0, f"{f}: data starts at {start}, not on the {stripe}-byte stripe")
        x, y = load_file(os.path.join(direct, f)), load_file(os.path.join(hf, f))
        check(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x),
              f"{f}: tensors differ from the converted archive's")
    for f in set(a) & set(b):
        if f not in ("loraslab.json", "checksums.json") and not (stripe and f in shards):
            check(filecmp.cmp(os.path.join(direct, f), os.path.join(hf, f), shallow=False),
                  f"{f}: the direct write differs from the converted archive")
    p1 = json.load(open(os.path.join(direct, "loraslab.json")))
    p2 = json.load(open(os.path.join(hf, "loraslab.json")))
    check(p1["tensors"] == p2["tensors"], "loraslab.json's tensors differ")
    check("generation_config.json" in a and "tokenizer.json" in a, f"serving files: {a}")
    tok = AutoTokenizer.from_pretrained(direct)
    check(tok.get_vocab().get("world") == 4 and tok.chat_template is not None,
          "the tokenizer does not load back from the directory")


def report_method(model: torch.nn.Module, adapter: str) -> dict:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
    import scale_recipe
    return scale_recipe.state_dict(model, adapter)


def finish(rank: int, fails: list) -> int:
    n = torch.tensor([len(fails)])
    dist.all_reduce(n)
    if rank == 0:
        print("PASSED" if int(n) == 0 else f"FAILED ({int(n)} checks)")
    dist.destroy_process_group()
    return 0 if int(n) == 0 else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without C++ static destructors: torch's gloo teardown at interpreter exit sometimes
    # destroys a joinable std::thread ("terminate called without an active exception", SIGABRT)
    # after every check has passed (seen twice in about forty runs).  MPI, when loraslab started
    # it (mpiexec), is finished first: Open MPI's launcher fails a process that leaves without.
    import loraslab
    loraslab.finalize()
    os._exit(code)
