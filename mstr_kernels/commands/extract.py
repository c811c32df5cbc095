"""`mstr extract`: HuBERT features of a corpus folder, one file per utterance + manifest.json."""


def register(sub):
    parser = sub.add_parser(
        "extract", help="extract HuBERT features of IEMOCAP, MELD, CREMA-D or a folder of audio "
        "files (resumable)",
        description="Decode every labelled utterance of a corpus folder to 16 kHz mono, run "
                    "HuBERT and store one layer's hidden states (float16) per utterance, with a "
                    "manifest of lengths, labels and speakers. Rerunning skips finished files.")
    parser.add_argument("--corpus", required=True, choices=("iemocap", "meld", "cremad", "folder"),
                        help="corpus layout; 'folder': any audio files under --root (sub-folders "
                             "too), labels from --labels or ROOT/labels.csv if present")
    parser.add_argument("--root", required=True,
                        help="corpus folder: IEMOCAP_full_release/, MELD.Raw/, AudioWAV/ or any "
                             "folder of audio files")
    parser.add_argument("--labels", default=None, metavar="CSV",
                        help="--corpus folder only: a CSV with columns file,label (file relative "
                             "to --root) and optionally speaker, split (train/valid/test); "
                             "default ROOT/labels.csv if it exists, else unlabelled")
    parser.add_argument("--out", required=True, help="output folder (created; resumable)")
    parser.add_argument("--model", default="facebook/hubert-large-ll60k",
                        help="HubertModel checkpoint: a local folder or a hub name "
                             "(default %(default)s)")
    parser.add_argument("--layer", type=int, default=12,
                        help="1-based transformer layer whose output is stored (default 12)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if visible)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="utterances per HuBERT batch (default 8)")
    parser.add_argument("--max-batch-seconds", type=float, default=200.0,
                        help="cap on padded audio per batch, in seconds (default 200)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="clips longer than this are cut to it and reported; 0 keeps all "
                             "(default 60)")
    parser.add_argument("--workers", type=int, default=2, help="audio decoding processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from mstr_kernels.commands.checks import UsageError, check_device, check_file, check_folder
    from mstr_kernels.data.corpora import CorpusLayoutError
    from mstr_kernels.features.extract import extract_corpus
    from mstr_kernels.features.hubert import ModelNotAvailable

    check_folder(args.root, "--root")
    if args.labels is not None:
        if args.corpus != "folder":
            raise UsageError(f"--labels is for --corpus folder only; {args.corpus} has its own "
                             f"label files")
        check_file(args.labels, "--labels")
    for flag in ("batch_size", "layer"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    if args.workers < 0:
        raise UsageError(f"--workers {args.workers}: must be >= 0")
    if args.max_seconds < 0 or args.max_batch_seconds <= 0:
        raise UsageError("--max-seconds must be >= 0 (0 keeps all) and --max-batch-seconds > 0")
    device = check_device(args.device or "auto")
    try:
        extract_corpus(args.corpus, args.root, args.out, args.model, args.layer,
                       device=device, batch_size=args.batch_size,
                       max_batch_seconds=args.max_batch_seconds,
                       max_seconds=args.max_seconds or None, num_workers=args.workers,
                       progress=not args.no_progress, labels=args.labels)
    except CorpusLayoutError as e:
        raise UsageError(f"--root: {e}") from e
    except ModelNotAvailable as e:
        raise UsageError(f"--model {e}") from e
    return 0
