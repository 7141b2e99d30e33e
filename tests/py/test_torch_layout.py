"""Unit tests of loraslab.torch's own logic, in one process: torch.chunk's row split, the
launcher choice, the PEFT name walk against merge_and_unload()'s state_dict, the JSON of sets."""
from __future__ import annotations

import os
import unittest
from unittest import mock

import torch

from loraslab import _capi
from loraslab.torch import _launch, _layout, _parts, _save, _walk


class ChunkRows(unittest.TestCase):
    def test_matches_torch_chunk(self) -> None:
        for rows in (0, 1, 2, 3, 7, 9, 64, 1001):
            for size in (1, 2, 3, 4, 5, 8):
                t = torch.arange(rows)
                chunks = list(torch.chunk(t, size)) if rows else []
                for rank in range(size):
                    r0, n = _layout.chunk_rows(rows, size, rank)
                    want = chunks[rank] if rank < len(chunks) else torch.empty(0)
                    self.assertEqual(n, want.numel(), (rows, size, rank))
                    if n:
                        self.assertEqual(r0, int(want[0]), (rows, size, rank))

    def test_replicated_slices_tile(self) -> None:
        x = torch.arange(45.0).reshape(9, 5)
        got = torch.cat([_layout.local_rows(x, "x", k, 4).local for k in range(4)])
        self.assertTrue(torch.equal(got, x))
        s = _layout.local_rows(torch.tensor(3.0), "s", 0, 2)
        self.assertEqual((s.row0, s.nrows, s.shape), (0, 1, ()))
        self.assertEqual(_layout.local_rows(torch.tensor(3.0), "s", 1, 2).nrows, 0)


class Fsdp1Pieces(unittest.TestCase):
    def test_factor_ranges(self) -> None:
        """A factor goes to the library as held: an FSDP1 piece as its element range (an empty
        piece at 0), a plain tensor whole; the library gathers what the merge needs."""
        from loraslab.torch._fsdp1 import Piece
        keep = _parts.Keep()
        cpu = torch.device("cpu")
        mk = lambda e0, ne: Piece("a", (4, 8), torch.float32, e0, ne, torch.ones(ne))  # noqa
        f = _parts.factor(mk(23, 5), "a", 0, 2, cpu, keep)
        self.assertEqual((f.e0, f.n, f.dtype), (23, 5, _capi.DTYPES["F32"]))
        self.assertTrue(f.data)
        f = _parts.factor(mk(9, 0), "a", 1, 2, cpu, keep)
        self.assertEqual((f.e0, f.n, f.data), (0, 0, None))
        f = _parts.factor(torch.ones(3, 8, dtype=torch.bfloat16), "b", 1, 2, cpu, keep)
        self.assertEqual((f.e0, f.n, f.dtype), (0, 24, _capi.DTYPES["BF16"]))

    def test_clean_names(self) -> None:
        from loraslab.torch._fsdp1 import clean
        self.assertEqual(clean("_fsdp_wrapped_module.base_model.model.model.layers.0."
                               "_fsdp_wrapped_module.self_attn.q_proj.lora_A.default"),
                         "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default")
        self.assertEqual(clean(""), "")


class Batches(unittest.TestCase):
    def test_cut_by_count_bytes_and_pieces(self) -> None:
        from loraslab.torch._fsdp1 import Piece

        def lora(r: int, cols: int) -> _walk.Item:
            lo = _walk.Lora(r, 8.0, 1.0, False, "linear", torch.empty(r, cols),
                            torch.empty(3, r))
            return _walk.Item("w", torch.empty(3, cols), lo)
        plain = _walk.Item("norm", torch.empty(4))
        pa = Piece("p.A", (4, 8), torch.float32, 0, 32, torch.empty(32))  # FSDP1: factors too
        piece = _walk.Item("p", Piece("p", (5, 8), torch.bfloat16, 0, 40, torch.empty(40)),
                           _walk.Lora(4, 8.0, 1.0, False, "linear", pa, pa))
        self.assertEqual(_parts.a_bytes(piece), 4 * 8 * 4)
        big = lora(32, 27648)  # a 32B model's down_proj A: 3.5 MB
        small = lora(32, 5120)  # its q_proj's: 0.66 MB
        self.assertEqual(_parts.a_bytes(big), 32 * 27648 * 4)
        self.assertEqual(_parts.a_bytes(plain), 0)
        items = [small] * 6 + [big] * 3 + [plain] * 20 + [piece, plain]
        got = _parts.batches(items)
        self.assertEqual(_parts.batches([piece, piece, plain]), [[0], [1], [2]])
        # six q_proj's (3.9 MB); each 3.5 MB A in a batch of its own, the last with tensors of
        # no LoRA up to 16; a piece alone
        self.assertEqual([(b[0], b[-1] + 1) for b in got],
                         [(0, 6), (6, 7), (7, 8), (8, 24), (24, 29), (29, 30), (30, 31)])
        for b in got:
            self.assertLessEqual(sum(_parts.a_bytes(items[x]) for x in b),
                                 max(_parts.BATCH_A_BYTES, 32 * 27648 * 4))
        # in a given order (a directory's shards in turn): the same rules over the permutation
        order = list(range(len(items)))[::-1]
        got = _parts.batches(items, order)
        self.assertEqual(sorted(x for b in got for x in b), list(range(len(items))))
        self.assertEqual([x for b in got for x in b], order)


class Launch(unittest.TestCase):
    def choose(self, env: dict, world: int = 2, rank: int = 1) -> str:
        with mock.patch.dict(os.environ, env, clear=True), \
             mock.patch.object(_launch.dist, "is_initialized", return_value=True), \
             mock.patch.object(_launch.dist, "get_world_size", return_value=world), \
             mock.patch.object(_launch.dist, "get_rank", return_value=rank):
            return _launch.choose(None)[0]

    def test_choices(self) -> None:
        self.assertEqual(self.choose({"TORCHELASTIC_RUN_ID": "x", "PMI_SIZE": "2",
                                      "PMI_RANK": "1"}), "callbacks")
        self.assertEqual(self.choose({"PMI_SIZE": "2", "PMI_RANK": "1"}), "mpi")
        self.assertEqual(self.choose({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}),
                         "mpi")
        self.assertEqual(self.choose({"PMI_SIZE": "1", "PMI_RANK": "0"}), "callbacks")
        self.assertEqual(self.choose({}), "callbacks")
        self.assertEqual(self.choose({"LSL_TORCH_COMM": "mpi"}), "mpi")
        with self.assertRaises(ValueError):
            self.choose({"LSL_TORCH_COMM": "nccl"})
        with mock.patch.object(_launch.dist, "is_initialized", return_value=False):
            self.assertEqual(_launch.choose(None)[0], "mpi")


class Names(unittest.TestCase):
    def test_walk_names_are_save_pretrained_names(self) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, Qwen2Config
        for tie in (False, True):
            torch.manual_seed(0)
            cfg = Qwen2Config(hidden_size=24, num_attention_heads=2, num_key_value_heads=1,
                              intermediate_size=40, vocab_size=50, num_hidden_layers=2,
                              tie_word_embeddings=tie)
            base = AutoModelForCausalLM.from_config(cfg)
            peft = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "embed_tokens"],
                                                   modules_to_save=["lm_head"] if not tie else None,
                                                   init_lora_weights=False),
                                  adapter_name="a1")
            peft.add_adapter("a2", LoraConfig(r=3, target_modules=["v_proj"]))
            peft.set_adapter("a1")
            items = list(_walk.walk(peft.base_model.model, "a1"))
            names = [it.name for it in items]
            import copy
            ref = copy.deepcopy(peft).merge_and_unload().state_dict()
            if tie:
                ref.pop("lm_head.weight")
            self.assertEqual(sorted(names), sorted(ref), f"tie={tie}")
            self.assertEqual(len(names), len(set(names)))
            merged = {it.name for it in items if it.lora is not None}
            self.assertIn("model.layers.0.self_attn.q_proj.weight", merged)
            self.assertIn("model.embed_tokens.weight", merged)
            self.assertNotIn("model.layers.0.self_attn.v_proj.weight", merged)  # a2 is not merged

    def test_sets_serialise_sorted(self) -> None:
        self.assertEqual(_save._jsonable({"b", "a", "c"}), ["a", "b", "c"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
