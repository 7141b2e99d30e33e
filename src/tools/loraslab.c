/* The loraslab command: argument parsing and messages only; all work goes through loraslab.h. */
#include "loraslab.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int g_rank = 0;
static lsl_comm *g_comm; /* over MPI_COMM_WORLD: every rank of the launch runs the command */

static const char *usage_main =
    "usage: mpiexec -n N loraslab <command> [options]\n"
    "\n"
    "Merge a LoRA fine-tune into its base model with every MPI rank writing its own rows straight\n"
    "into the Hugging Face directory transformers and vLLM load (or one parallel-HDF5 file, the\n"
    "archive); no rank ever holds a whole tensor in host memory.\n"
    "\n"
    "commands:\n"
    "  merge     HF base checkpoint + PEFT LoRA adapter -> merged HF directory (or HDF5 file)\n"
    "  convert   loraslab HDF5 file -> Hugging Face safetensors checkpoint directory\n"
    "  import    HF checkpoint (directory or .safetensors file) -> HDF5 file, for archiving\n"
    "  verify    re-read an HDF5 file or a directory loraslab wrote; check every checksum\n"
    "  inspect   describe a loraslab HDF5 file (table, or --json)\n"
    "  version   print the version\n"
    "\n"
    "Run `loraslab <command> --help` for a command's options.\n";

static const char *usage_merge =
    "usage: mpiexec -n N loraslab merge --base DIR --adapter DIR --output OUT [options]\n"
    "\n"
    "Writes every tensor of the base checkpoint into OUT, with W = W0 + scaling * B @ A merged\n"
    "into each weight the adapter targets (scaling = lora_alpha / r, per module with\n"
    "rank_pattern / alpha_pattern, alpha / sqrt(r) with use_rslora).  OUT is a Hugging Face\n"
    "directory that transformers and vLLM load (model.safetensors or model-0000i-of-0000K\n"
    "shards and their index, config.json, the base's tokenizer and other serving files,\n"
    "loraslab.json, checksums.json), or, when it ends in .h5 or .hdf5, one HDF5 file (the\n"
    "archive; `loraslab convert` makes the directory of it).  Rank 0 reads the headers and\n"
    "plans; each rank reads and writes only its own rows (FSDP2 Shard(0) chunking), several\n"
    "shard files at once.  OUT appears only when everything is on disk and its checksums are\n"
    "recorded; a failed run leaves nothing at OUT.\n"
    "\n"
    "  -b, --base DIR          HF checkpoint: model.safetensors or model.safetensors.index.json\n"
    "                          with its shards (config.json is kept in the output)\n"
    "  -a, --adapter DIR       PEFT adapter: adapter_config.json + adapter_model.safetensors\n"
    "  -o, --output OUT        the directory (or .h5 file) to write; its parent must exist\n"
    "      --format F          safetensors (a directory) or h5, whatever OUT's name says\n"
    "      --max-shard-size SIZE  a directory's largest shard (default 5GB, as save_pretrained;\n"
    "                          500MB, 5GiB, bytes); a larger tensor gets a shard of its own\n"
    "      --device cpu|cuda   where to merge (default cpu, in fp64).  cuda: rank i of a node\n"
    "                          uses GPU i mod (GPUs visible), several ranks may share one;\n"
    "                          fp32 accumulation as PEFT on a GPU (results differ from cpu by\n"
    "                          more than 1 ulp only where W0 and the delta nearly cancel).\n"
    "                          DoRA and LoRA on embeddings are merged on the CPU either way\n"
    "      --staging-mib N     host staging per rank, MiB (default 64); host memory per rank is\n"
    "                          this plus the LoRA factors of a few tensors at a time (whole A's,\n"
    "                          its own rows of B: a quarter of N, or one tensor's when larger),\n"
    "                          whatever the model size\n"
    "                          (--device cuda pins at most 16 MiB of it: larger chunks wrote\n"
    "                          slower)\n"
    "      --align SIZE        dataset alignment, at most 1GiB (default: Lustre stripe / GPFS\n"
    "                          block size, 1 MiB on NFS, 64 KiB on local filesystems)\n"
    "      --stripe-count N    Lustre: stripe the new file over N OSTs (1-2000, or -1 for all)\n"
    "      --stripe-size SIZE  Lustre: stripe size (a multiple of 64KiB); elsewhere it still sets\n"
    "                          the alignment and where write pieces are cut.  Without either,\n"
    "                          the I/O plan keeps the directory's layout unless it is the\n"
    "                          one-stripe default and FILE is 4 GiB or more: then one 4 MiB\n"
    "                          stripe per GiB (2 to 64)\n"
    "      --plan              print the I/O plan (filesystem, layout, aggregators, alignment,\n"
    "                          per-rank extents, stripes shared between ranks) and stop: no\n"
    "                          tensor is read, nothing appears at OUT\n"
    "      --overwrite         replace OUT if it exists (in one step, at the end)\n"
    "      --strict            refuse an adapter whose base_model_name_or_path does not name\n"
    "                          the base directory\n"
    "      --stats             print time, bytes and peak host memory per rank at the end\n"
    "                          (and the I/O plan at the start)\n"
    "      --progress MODE     text (default), json (one JSON object per line on stderr:\n"
    "                          tensors and bytes done and total, rate, eta, ranks; the last\n"
    "                          has \"done\": true), or none\n"
    "  -q, --quiet             no progress lines (--progress none)\n"
    "\n"
    "Environment: LSL_MPIIO_HINTS=\"key=value;...\" adds MPI-IO hints (e.g. cb_nodes=8), over\n"
    "the plan's; LSL_IOPLAN=off keeps the directory's layout and MPI's choices, cuts nothing;\n"
    "LSL_PROFILE=1 prints where the time went (define, gathers, GPU waits, writes, close);\n"
    "LSL_PROFILE=2 adds a line per tensor; LSL_IO_THREADS=K writer threads per rank for a\n"
    "directory (default 8, at most one per shard).\n"
    "Also merged as PEFT does: DoRA (use_dora), lora_bias, LoRA on embeddings, fan_in_fan_out\n"
    "(GPT-2 Conv1D), modules_to_save copies and trained biases (bias=all/lora_only).\n"
    "Refused with a message naming the option, before any output is created: non-LoRA PEFT\n"
    "types, PiSSA/OLoRA/CorDA/LoftQ initialisations, target_parameters and other variant\n"
    "configs, DoRA on embeddings, resized vocabularies, quantized base\n"
    "weights, adapters whose shapes do not fit the base.\n"
    "\n"
    "examples:\n"
    "  mpiexec -n 8 loraslab merge -b Qwen2.5-7B -a my-lora -o /lustre/me/merged\n"
    "  mpiexec -n 8 loraslab merge -b Qwen2.5-7B -a my-lora -o /lustre/me/archive.h5\n"
    "  srun --ntasks-per-node=4 --gpus-per-node=4 loraslab merge --device cuda -b ... -a ... -o "
    "...\n";

static const char *usage_import =
    "usage: mpiexec -n N loraslab import HF_DIR_OR_FILE OUT.h5 [options]\n"
    "       (or --base HF_DIR_OR_FILE --output OUT.h5)\n"
    "\n"
    "Copies every tensor of an HF safetensors checkpoint (a directory with model.safetensors or\n"
    "an index and shards, or one .safetensors file) into the loraslab HDF5 layout, in parallel,\n"
    "with per-tensor CRC-32C checksums, for archiving checkpoints that merge did not write.\n"
    "Options as for merge: --staging-mib, --align, --stripe-count, --stripe-size, --plan,\n"
    "--overwrite, --stats, --progress, --quiet; an OUT not ending in .h5/.hdf5 (or --format\n"
    "safetensors) is written as a safetensors directory, resharded by --max-shard-size.\n";

static const char *usage_convert =
    "usage: mpiexec -n N loraslab convert IN.h5 OUT_DIR [options]\n"
    "\n"
    "Writes OUT_DIR as a Hugging Face checkpoint that transformers loads: model.safetensors, or\n"
    "shards model-0000i-of-0000N.safetensors (split as huggingface_hub splits them) plus\n"
    "model.safetensors.index.json; config.json from the merge's base; loraslab.json (provenance,\n"
    "per-tensor CRC-32C); checksums.json (each file's CRC-32C, base64 as object stores report\n"
    "it, for verifying an upload).  Ranks copy equal shares of the bytes without decoding (cut\n"
    "at the shards' stripes, so no two ranks write one), and\n"
    "every tensor's CRC-32C is checked against the file while it is copied.  The directory is\n"
    "assembled under a hidden sibling name and renamed into place only when complete.\n"
    "\n"
    "      --max-shard-size SIZE  largest shard (default 5GB; 500MB, 5GB, 5GiB, 1.5GB, bytes);\n"
    "                             a tensor larger than SIZE gets a shard of its own\n"
    "      --no-verify            do not check checksums while copying (copy_file_range path)\n"
    "      --staging-mib N        host buffer per rank, MiB (default 64)\n"
    "      --overwrite            replace an existing non-empty OUT_DIR\n"
    "      --stripe-count N, --stripe-size SIZE\n"
    "                             Lustre layout of each shard (as for merge; without them a\n"
    "                             shard of 4 GiB or more in a one-stripe directory gets one\n"
    "                             4 MiB stripe per GiB)\n"
    "      --plan                 print the shards, their layouts and each rank's share, and\n"
    "                             stop: nothing appears at OUT_DIR\n"
    "      --stats                print time, bytes and peak host memory (and the plan)\n"
    "      --progress MODE        text (default), json (JSON lines on stderr), or none\n"
    "  -q, --quiet                no progress lines (--progress none)\n";

static const char *usage_verify =
    "usage: mpiexec -n N loraslab verify FILE_OR_DIR [--staging-mib N] [--progress MODE] "
    "[--quiet]\n"
    "\n"
    "Re-reads a loraslab HDF5 file (every tensor against its crc32c attribute) or a directory\n"
    "written by merge, save_merged or convert (every shard's safetensors header rules, every\n"
    "tensor against loraslab.json, every file against checksums.json), ranks sharing the\n"
    "bytes.  Exit status 0 only when everything matches.\n";

static const char *usage_inspect =
    "usage: loraslab inspect [--json] FILE\n"
    "\n"
    "Lists the tensors of a loraslab HDF5 file: dtype, shape, file offset, CRC-32C and what was\n"
    "merged.  --json prints a document valid against schemas/loraslab-file.schema.json.\n";

static void err(const char *cmd, lsl_status st)
{
    if (g_rank == 0)
        fprintf(stderr, "loraslab %s: error: %s [%s]\n", cmd,
                *lsl_last_error() ? lsl_last_error() : lsl_strerror(st), lsl_status_name(st));
}

static int usage_error(const char *cmd, const char *usage, const char *what)
{
    if (g_rank == 0)
        fprintf(stderr, "loraslab %s: %s\n\n%s", cmd, what, usage);
    return 2;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || !end || *end || s[0] == '-' || end == s)
        return -1;
    *out = v;
    return 0;
}

/* --progress text|json|none */
static int parse_progress(const char *s, int *mode)
{
    *mode = strcmp(s, "text") == 0   ? LSL_PROGRESS_TEXT
            : strcmp(s, "json") == 0 ? LSL_PROGRESS_JSON
            : strcmp(s, "none") == 0 ? LSL_PROGRESS_NONE
                                     : -1;
    return *mode < 0 ? -1 : 0;
}

/* --staging-mib N: 1 to 1024 MiB, in bytes. */
static int parse_staging(const char *s, uint64_t *bytes)
{
    uint64_t v;
    if (parse_u64(s, &v) || v == 0 || v > 1024)
        return -1;
    *bytes = v << 20;
    return 0;
}

#define STRIPE_COUNT_RULE "--stripe-count takes 1 to 2000, or -1 (all OSTs)"
#define STRIPE_SIZE_RULE  "--stripe-size takes a multiple of 64KiB up to 4GiB-64KiB (1MiB, 4MiB)"

static int parse_stripe_count(const char *s, uint64_t *count)
{
    uint64_t v;
    if (strcmp(s, "-1") == 0 || strcmp(s, "all") == 0) {
        *count = LSL_STRIPE_ALL;
        return 0;
    }
    if (!*s || strspn(s, "0123456789") != strlen(s) || lsl_parse_size(s, &v) != LSL_OK || v == 0 ||
        v > LSL_MAX_STRIPE_COUNT)
        return -1;
    *count = v;
    return 0;
}

static int parse_stripe_size(const char *s, uint64_t *size)
{
    uint64_t v;
    if (lsl_parse_size(s, &v) != LSL_OK || v == 0 || v % (64u << 10) != 0 || v > 0xFFFF0000ull)
        return -1;
    *size = v;
    return 0;
}

static int cmd_job(int argc, char **argv, int with_adapter)
{
    const char *cmd = with_adapter ? "merge" : "import";
    const char *usage = with_adapter ? usage_merge : usage_import;
    enum {
        O_STAGING = 1000,
        O_ALIGN,
        O_OVERWRITE,
        O_STRICT,
        O_STATS,
        O_DEVICE,
        O_PROGRESS,
        O_SCOUNT,
        O_SSIZE,
        O_PLAN,
        O_FORMAT,
        O_SHARD
    };
    static const struct option opts[] = {{"base", required_argument, NULL, 'b'},
                                         {"format", required_argument, NULL, O_FORMAT},
                                         {"max-shard-size", required_argument, NULL, O_SHARD},
                                         {"stripe-count", required_argument, NULL, O_SCOUNT},
                                         {"stripe-size", required_argument, NULL, O_SSIZE},
                                         {"plan", no_argument, NULL, O_PLAN},
                                         {"device", required_argument, NULL, O_DEVICE},
                                         {"adapter", required_argument, NULL, 'a'},
                                         {"output", required_argument, NULL, 'o'},
                                         {"staging-mib", required_argument, NULL, O_STAGING},
                                         {"align", required_argument, NULL, O_ALIGN},
                                         {"overwrite", no_argument, NULL, O_OVERWRITE},
                                         {"strict", no_argument, NULL, O_STRICT},
                                         {"stats", no_argument, NULL, O_STATS},
                                         {"progress", required_argument, NULL, O_PROGRESS},
                                         {"quiet", no_argument, NULL, 'q'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    lsl_job_config cfg = LSL_JOB_CONFIG_INIT;
    int stats = 0, c;
    uint64_t v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "b:a:o:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'b': cfg.base = optarg; break;
        case 'a':
            if (!with_adapter)
                return usage_error(cmd, usage, "import takes no --adapter (use merge)");
            cfg.adapter = optarg;
            break;
        case 'o': cfg.output = optarg; break;
        case 'q': cfg.quiet = LSL_PROGRESS_NONE; break;
        case O_PROGRESS:
            if (parse_progress(optarg, &cfg.quiet))
                return usage_error(cmd, usage, "--progress takes text, json or none");
            break;
        case O_STAGING:
            if (parse_staging(optarg, &cfg.staging_bytes))
                return usage_error(cmd, usage, "--staging-mib takes 1 to 1024");
            break;
        case O_ALIGN:
            if (lsl_parse_size(optarg, &v) != LSL_OK || v == 0 || v > LSL_MAX_ALIGNMENT)
                return usage_error(cmd, usage,
                                   "--align takes a size from 1 byte to 1GiB (4MiB, 1048576)");
            cfg.alignment = v;
            break;
        case O_SCOUNT:
            if (parse_stripe_count(optarg, &cfg.stripe_count))
                return usage_error(cmd, usage, STRIPE_COUNT_RULE);
            break;
        case O_SSIZE:
            if (parse_stripe_size(optarg, &cfg.stripe_size))
                return usage_error(cmd, usage, STRIPE_SIZE_RULE);
            break;
        case O_PLAN: cfg.plan = LSL_PLAN_ONLY; break;
        case O_OVERWRITE: cfg.overwrite = 1; break;
        case O_STRICT: cfg.strict = 1; break;
        case O_FORMAT:
            if (strcmp(optarg, "safetensors") == 0 || strcmp(optarg, "hf") == 0)
                cfg.format = LSL_OUTPUT_SAFETENSORS;
            else if (strcmp(optarg, "h5") == 0 || strcmp(optarg, "hdf5") == 0)
                cfg.format = LSL_OUTPUT_HDF5;
            else
                return usage_error(cmd, usage, "--format takes safetensors or h5");
            break;
        case O_SHARD:
            if (lsl_parse_size(optarg, &cfg.max_shard_bytes) != LSL_OK || !cfg.max_shard_bytes)
                return usage_error(cmd, usage,
                                   "--max-shard-size takes a size (5GB, 500MB, 2GiB, bytes)");
            break;
        case O_STATS: stats = 1; break;
        case O_DEVICE:
            if (!with_adapter)
                return usage_error(cmd, usage, "import merges nothing: --device is for merge");
            if (strcmp(optarg, "cpu") != 0 && strcmp(optarg, "cuda") != 0)
                return usage_error(cmd, usage, "--device takes cpu or cuda");
            cfg.merge_on = strcmp(optarg, "cuda") == 0 ? LSL_MEM_DEVICE : LSL_MEM_HOST;
            break;
        case 'h':
            if (g_rank == 0)
                fputs(usage, stdout);
            return 0;
        default: {
            char m[128];
            snprintf(m, sizeof m, "unknown or incomplete option '%s'", argv[optind - 1]);
            return usage_error(cmd, usage, m);
        }
        }
    }
    if (!with_adapter && !cfg.base && !cfg.output && argc - optind == 2) {
        cfg.base = argv[optind];
        cfg.output = argv[optind + 1];
        optind += 2;
    }
    if (optind < argc)
        return usage_error(cmd, usage, "unexpected argument (options take --name VALUE)");
    if (!cfg.base || !cfg.output || (with_adapter && !cfg.adapter))
        return usage_error(cmd, usage,
                           with_adapter ? "--base, --adapter and --output are required"
                                        : "--base and --output are required");
    if (stats && !cfg.plan)
        cfg.plan = LSL_PLAN_PRINT;
    lsl_job_stats js;
    lsl_status st = lsl_merge_all(g_comm, &cfg, &js);
    if (st != LSL_OK) {
        err(cmd, st);
        return 1;
    }
    if (cfg.plan == LSL_PLAN_ONLY)
        return 0;
    if (g_rank == 0 && cfg.quiet == LSL_PROGRESS_TEXT)
        fprintf(stderr, "loraslab: wrote %s: %llu tensors, %llu merged\n", cfg.output,
                (unsigned long long)js.tensors, (unsigned long long)js.merged_tensors);
    if (g_rank == 0 && stats)
        printf("stats: seconds=%.3f bytes=%llu GB/s=%.3f tensors=%llu merged=%llu "
               "rss_baseline_max_mib=%.1f rss_peak_max_mib=%.1f rss_growth_min_mib=%.1f "
               "rss_growth_max_mib=%.1f\n",
               js.seconds, (unsigned long long)js.bytes, (double)js.bytes / js.seconds / 1e9,
               (unsigned long long)js.tensors, (unsigned long long)js.merged_tensors,
               (double)js.rss_baseline_max / 1048576.0, (double)js.rss_peak_max / 1048576.0,
               (double)js.rss_growth_min / 1048576.0, (double)js.rss_growth_max / 1048576.0);
    return 0;
}

static int cmd_convert(int argc, char **argv)
{
    enum {
        O_SHARD = 1000,
        O_NOVERIFY,
        O_STAGING,
        O_OVERWRITE,
        O_STATS,
        O_PROGRESS,
        O_SCOUNT,
        O_SSIZE,
        O_PLAN
    };
    static const struct option opts[] = {{"max-shard-size", required_argument, NULL, O_SHARD},
                                         {"stripe-count", required_argument, NULL, O_SCOUNT},
                                         {"stripe-size", required_argument, NULL, O_SSIZE},
                                         {"plan", no_argument, NULL, O_PLAN},
                                         {"no-verify", no_argument, NULL, O_NOVERIFY},
                                         {"staging-mib", required_argument, NULL, O_STAGING},
                                         {"overwrite", no_argument, NULL, O_OVERWRITE},
                                         {"stats", no_argument, NULL, O_STATS},
                                         {"progress", required_argument, NULL, O_PROGRESS},
                                         {"quiet", no_argument, NULL, 'q'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    lsl_convert_config cfg = LSL_CONVERT_CONFIG_INIT;
    int stats = 0, c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
        switch (c) {
        case O_SHARD:
            if (lsl_parse_size(optarg, &cfg.max_shard_bytes) != LSL_OK)
                return usage_error("convert", usage_convert, lsl_last_error());
            break;
        case O_NOVERIFY: cfg.no_verify = 1; break;
        case O_SCOUNT:
            if (parse_stripe_count(optarg, &cfg.stripe_count))
                return usage_error("convert", usage_convert, STRIPE_COUNT_RULE);
            break;
        case O_SSIZE:
            if (parse_stripe_size(optarg, &cfg.stripe_size))
                return usage_error("convert", usage_convert, STRIPE_SIZE_RULE);
            break;
        case O_PLAN: cfg.plan = LSL_PLAN_ONLY; break;
        case O_STAGING:
            if (parse_staging(optarg, &cfg.staging_bytes))
                return usage_error("convert", usage_convert, "--staging-mib takes 1 to 1024");
            break;
        case O_OVERWRITE: cfg.overwrite = 1; break;
        case O_STATS: stats = 1; break;
        case 'q': cfg.quiet = LSL_PROGRESS_NONE; break;
        case O_PROGRESS:
            if (parse_progress(optarg, &cfg.quiet))
                return usage_error("convert", usage_convert, "--progress takes text, json or none");
            break;
        case 'h':
            if (g_rank == 0)
                fputs(usage_convert, stdout);
            return 0;
        default: return usage_error("convert", usage_convert, "unknown or incomplete option");
        }
    }
    if (argc - optind != 2)
        return usage_error("convert", usage_convert, "IN.h5 and OUT_DIR are required");
    cfg.input = argv[optind];
    cfg.outdir = argv[optind + 1];
    if (stats && !cfg.plan)
        cfg.plan = LSL_PLAN_PRINT;
    lsl_job_stats js;
    lsl_status st = lsl_convert_all(g_comm, &cfg, &js);
    if (st != LSL_OK) {
        err("convert", st);
        return 1;
    }
    if (cfg.plan == LSL_PLAN_ONLY)
        return 0;
    if (g_rank == 0 && stats)
        printf("stats: seconds=%.3f bytes=%llu GB/s=%.3f tensors=%llu rss_growth_max_mib=%.1f\n",
               js.seconds, (unsigned long long)js.bytes, (double)js.bytes / js.seconds / 1e9,
               (unsigned long long)js.tensors, (double)js.rss_growth_max / 1048576.0);
    return 0;
}

static int cmd_verify(int argc, char **argv)
{
    static const struct option opts[] = {{"staging-mib", required_argument, NULL, 's'},
                                         {"progress", required_argument, NULL, 'p'},
                                         {"quiet", no_argument, NULL, 'q'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    uint64_t staging = 0;
    int quiet = 0, c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (parse_staging(optarg, &staging))
                return usage_error("verify", usage_verify, "--staging-mib takes 1 to 1024");
            break;
        case 'q': quiet = LSL_PROGRESS_NONE; break;
        case 'p':
            if (parse_progress(optarg, &quiet))
                return usage_error("verify", usage_verify, "--progress takes text, json or none");
            break;
        case 'h':
            if (g_rank == 0)
                fputs(usage_verify, stdout);
            return 0;
        default: return usage_error("verify", usage_verify, "unknown or incomplete option");
        }
    }
    if (argc - optind != 1)
        return usage_error("verify", usage_verify, "FILE_OR_DIR is required");
    lsl_status st = lsl_verify_all(g_comm, argv[optind], staging, quiet, NULL);
    if (st != LSL_OK) {
        err("verify", st);
        return 1;
    }
    return 0;
}

static int cmd_inspect(int argc, char **argv)
{
    int json = 0;
    const char *file = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            if (g_rank == 0)
                fputs(usage_inspect, stdout);
            return 0;
        } else if (argv[i][0] == '-' || file)
            return usage_error("inspect", usage_inspect, "unexpected argument");
        else
            file = argv[i];
    }
    if (!file)
        return usage_error("inspect", usage_inspect, "FILE is required");
    if (g_rank != 0)
        return 0;
    lsl_status st = lsl_inspect(file, json, stdout);
    if (st != LSL_OK) {
        err("inspect", st);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    /* SIGINT / SIGTERM / SIGHUP (Ctrl-C, scancel, mpiexec forwarding either): what this rank's
     * job left under a temporary name goes, and the exit status is 128 + the signal. */
    lsl_signals_install();
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    /* the handle is this rank's allocation: every rank learns whether all have one */
    int bad = lsl_comm_from_mpi(MPI_COMM_WORLD, &g_comm) != LSL_OK, any = bad;
    if (bad)
        fprintf(stderr, "loraslab: rank %d: %s\n", g_rank, lsl_last_error());
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any) {
        MPI_Finalize();
        return 1;
    }
    int rc;
    const char *cmd = argc > 1 ? argv[1] : "";
    if (strcmp(cmd, "merge") == 0)
        rc = cmd_job(argc - 1, argv + 1, 1);
    else if (strcmp(cmd, "import") == 0)
        rc = cmd_job(argc - 1, argv + 1, 0);
    else if (strcmp(cmd, "convert") == 0)
        rc = cmd_convert(argc - 1, argv + 1);
    else if (strcmp(cmd, "verify") == 0)
        rc = cmd_verify(argc - 1, argv + 1);
    else if (strcmp(cmd, "inspect") == 0)
        rc = cmd_inspect(argc - 1, argv + 1);
    else if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        if (g_rank == 0)
            printf("loraslab %s (HDF5 layout version %d)\n", lsl_version_string(),
                   LSL_FORMAT_VERSION);
        rc = 0;
    } else if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        if (g_rank == 0)
            fputs(usage_main, stdout);
        rc = 0;
    } else {
        if (g_rank == 0)
            fprintf(stderr, "loraslab: %s%s%s\n\n%s", *cmd ? "unknown command '" : "no command",
                    cmd, *cmd ? "'" : "", usage_main);
        rc = 2;
    }
    lsl_comm_free(&g_comm);
    MPI_Finalize();
    return rc;
}
