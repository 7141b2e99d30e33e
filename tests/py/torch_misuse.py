"""loraslab.torch.save_merged used as careless or unlucky jobs use it (issue 26), under torchrun
with gloo on the CPU.  One case per run:
    torch_misuse.py --out DIR --case NAME
  skip          rank 1 never calls save_merged: rank 0 raises loraslab.Error within the job's
                timeout (init_process_group(timeout=10 s)), not torch's 30-minute default
  two-adapters  two active adapters: refused by name on every rank (FSDP2; --wrap fsdp1 too)
  meta          a model on the meta device: refused naming a tensor
  destroyed     after destroy_process_group: refused, saying so
  exists        an existing file without overwrite: the message says overwrite=True
  paths         ranks pass different paths: LSL_ERR_INCONSISTENT on every rank, nothing written
  config        config.json of a from_config model names its architecture
  interrupt     SIGINT reaches rank 0 mid-save: rank 0 raises KeyboardInterrupt itself, the
                others loraslab.Error LSL_ERR_INTERRUPTED, nothing left
  nomem         LSL_FAULT=malloc:2 on rank 1: every rank says "out of memory"
  nomem-handle  LSL_FAULT=malloc:1 on rank 1 (its communicator handle, agreed over gloo before
                any collective of the library): every rank names rank 1's handle
  slow          a save slowed down (each allreduce and allgather callback sleeps 0.1 s), for
                signals sent from outside
Prints PASSED on rank 0 when every rank's checks held."""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist


def build(wrap: str, second: bool = False, meta: bool = False) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config
    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=72, num_attention_heads=6, num_key_value_heads=2,
                      intermediate_size=200, vocab_size=1001, num_hidden_layers=2,
                      max_position_embeddings=64)
    if meta:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    else:
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    if second:
        peft.add_adapter("other", LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
        peft.base_model.set_adapter(["default", "other"])
    if meta:
        return peft
    if wrap == "fsdp1":
        from peft.utils.other import fsdp_auto_wrap_policy
        from torch.distributed.fsdp import FullyShardedDataParallel
        return FullyShardedDataParallel(peft, auto_wrap_policy=fsdp_auto_wrap_policy(peft),
                                        device_id=torch.device("cpu"))
    from torch.distributed.fsdp import fully_shard
    for layer in peft.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(peft)
    return peft


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--case", required=True)
    ap.add_argument("--wrap", default="fsdp2")
    a = ap.parse_args()
    if "RANK" not in os.environ:  # mpiexec: torch's ranks from the launcher's
        os.environ.update(RANK=os.environ.get("PMI_RANK", "0"),
                          WORLD_SIZE=os.environ.get("PMI_SIZE", "1"), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("LSL_TEST_PORT", "29577"))
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=10))
    rank = dist.get_rank()
    import loraslab
    import loraslab.torch as lt
    fails: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            fails.append(what)
            print(f"[rank {rank}] FAIL: {what}", file=sys.stderr, flush=True)

    path = os.path.join(a.out, "merged.h5")

    def expect(name: str, text: str, **kw) -> None:
        try:
            lt.save_merged(model, kw.pop("path", path), quiet=True, **kw)
            check(False, f"{a.case}: the save was accepted")
        except loraslab.Error as e:
            check(e.name == name and text in e.message, f"{a.case}: got {e}")
            print(f"torch_misuse: {a.case}: rank {rank}: {e.message[:160]}", flush=True)

    def nothing_left() -> None:
        left = glob.glob(os.path.join(a.out, "*.h5")) + glob.glob(os.path.join(a.out, ".*lsl-tmp*"))
        check(not left, f"{a.case}: left {left}")

    model = build(a.wrap, second=a.case == "two-adapters", meta=a.case == "meta")
    if a.case == "skip":
        if rank == 1:  # skips the save; its own next collective times out
            try:
                dist.barrier()
            except Exception:  # noqa: BLE001 - expected: rank 0 is inside save_merged
                pass
            print(f"torch_misuse: skip: rank 1 timed out in its own barrier", flush=True)
            os._exit(0)
        t0 = time.time()
        expect("LSL_ERR_COMM", "every rank must call it")
        check(time.time() - t0 < 60, f"skip: rank 0 waited {time.time() - t0:.0f} s")
        nothing_left()
        print("PASSED" if not fails else "FAILED", flush=True)
        os._exit(1 if fails else 0)
    elif a.case == "two-adapters":
        expect("LSL_ERR_UNSUPPORTED", "several active adapters ['default', 'other']")
        lt.save_merged(model, path, adapter_name="other", quiet=True)  # one named: fine
        check(os.path.exists(path), "two-adapters: adapter_name='other' wrote nothing")
    elif a.case == "meta":
        expect("LSL_ERR_UNSUPPORTED", "is on the meta device")
        nothing_left()
    elif a.case == "destroyed":
        dist.destroy_process_group()
        expect("LSL_ERR_INVALID_ARG", "torch.distributed is not initialised")
        print("PASSED" if not fails else "FAILED", flush=True)
        return 1 if fails else 0
    elif a.case == "exists":
        lt.save_merged(model, path, quiet=True)
        expect("LSL_ERR_EXISTS", "pass overwrite=True to replace it")
        check(all("--overwrite" not in f for f in fails), "exists: the CLI's spelling")
    elif a.case == "paths":
        expect("LSL_ERR_INCONSISTENT", "the ranks were given different path",
               path=os.path.join(a.out, f"rank{rank}.h5"))
        nothing_left()
    elif a.case == "config":
        lt.save_merged(model, path, quiet=True)
        lt.convert(path, os.path.join(a.out, "hf"), quiet=True)
        cfg = json.load(open(os.path.join(a.out, "hf", "config.json")))
        check(cfg.get("architectures") == ["Qwen2ForCausalLM"], f"config: {cfg.get('architectures')}")
    elif a.case == "interrupt":
        from loraslab.torch import _comm
        calls = [0]
        real = _comm.TorchComm._allreduce

        def allreduce(self, *args):  # SIGINT to rank 0 in the middle of the save
            calls[0] += 1
            if rank == 0 and calls[0] == 12:
                os.kill(os.getpid(), signal.SIGINT)
            return real(self, *args)
        _comm.TorchComm._allreduce = allreduce
        try:
            lt.save_merged(model, path, quiet=True)
            check(False, "interrupt: the save was accepted")
        except KeyboardInterrupt:
            check(rank == 0, "interrupt: KeyboardInterrupt on a rank that got no signal")
            print(f"torch_misuse: interrupt: rank {rank}: KeyboardInterrupt", flush=True)
        except loraslab.Error as e:
            check(rank != 0 and e.name == "LSL_ERR_INTERRUPTED", f"interrupt: rank {rank}: {e}")
            print(f"torch_misuse: interrupt: rank {rank}: {e.message[:120]}", flush=True)
        _comm.TorchComm._allreduce = real
        check(signal.getsignal(signal.SIGINT) is signal.default_int_handler,
              "interrupt: Python's SIGINT handler not restored")
        dist.barrier()
        nothing_left()
    elif a.case == "nomem":
        os.environ.update(LSL_FAULT="malloc:2", LSL_FAULT_RANK="1")
        expect("LSL_ERR_NOMEM", "out of memory")
        os.environ.pop("LSL_FAULT")
        nothing_left()
    elif a.case == "nomem-handle":  # the process's first allocation: rank 1's communicator handle
        os.environ.update(LSL_FAULT="malloc:1", LSL_FAULT_RANK="1")
        expect("LSL_ERR_NOMEM", "rank 1: could not make its communicator handle")
        os.environ.pop("LSL_FAULT")
        nothing_left()
    elif a.case == "slow":
        from loraslab.torch import _comm
        # every allreduce and allgather sleeps: the save's length must not hang on which of
        # the two a put's agreements happen to use
        for name in ("_allreduce", "_allgather"):
            def slowed(self, *args, _real=getattr(_comm.TorchComm, name)):
                time.sleep(0.1)
                return _real(self, *args)
            setattr(_comm.TorchComm, name, slowed)
        print("torch_misuse: slow: saving", flush=True)
        lt.save_merged(model, path, quiet=True)
        print("torch_misuse: slow: the save finished (a signal should have ended it)", flush=True)
    else:
        raise SystemExit(f"unknown case {a.case}")
    from torch_save import finish  # every rank's checks, PASSED on rank 0
    return finish(rank, fails)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
