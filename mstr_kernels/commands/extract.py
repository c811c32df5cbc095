"""`mstr extract`: HuBERT features of a corpus folder, one file per utterance + manifest.json."""


def register(sub):
    parser = sub.add_parser(
        "extract", help="extract HuBERT features of IEMOCAP, MELD or CREMA-D (resumable)",
        description="Decode every labelled utterance of a corpus folder to 16 kHz mono, run "
                    "HuBERT and store one layer's hidden states (float16) per utterance, with a "
                    "manifest of lengths, labels and speakers. Rerunning skips finished files.")
    parser.add_argument("--corpus", required=True, choices=("iemocap", "meld", "cremad"))
    parser.add_argument("--root", required=True,
                        help="corpus folder: IEMOCAP_full_release/, MELD.Raw/ or AudioWAV/")
    parser.add_argument("--out", required=True, help="output folder (created; resumable)")
    parser.add_argument("--model", default="facebook/hubert-large-ll60k",
                        help="HubertModel checkpoint: a local folder or a hub name "
                             "(default %(default)s)")
    parser.add_argument("--layer", type=int, default=12,
                        help="1-based transformer layer whose output is stored (default 12)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if visible)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-seconds", type=float, default=200.0,
                        help="cap on padded audio per batch, in seconds (default 200)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="clips longer than this are cut to it and reported; 0 keeps all "
                             "(default 60)")
    parser.add_argument("--workers", type=int, default=2, help="audio decoding processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from mstr_kernels.data.corpora import CorpusLayoutError
    from mstr_kernels.features.extract import extract_corpus

    try:
        extract_corpus(args.corpus, args.root, args.out, args.model, args.layer,
                       device=args.device, batch_size=args.batch_size,
                       max_batch_seconds=args.max_batch_seconds,
                       max_seconds=args.max_seconds or None, num_workers=args.workers,
                       progress=not args.no_progress)
    except CorpusLayoutError as e:
        print(f"mstr extract: {e}")
        return 2
    return 0
