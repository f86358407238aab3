"""Benchmark: LiDAR-prompted batched SAM (ours) vs vanilla SamAutomaticMaskGenerator(points_per_side=32).

On CUDA: segment-anything's real vit_h and vit_b architectures with random weights (no checkpoint, no
network), 900x1600 images (nuScenes size), 6 images per encoder batch. A realistic number of masks
per image is kept by both: ours keeps the top ``--max-masks`` (128) after NMS from <= 256 LiDAR-like
prompts (3 candidates each); vanilla keeps ~128 per image by predicted IoU per grid batch
(lidarlift.masks.sam.TopKAutomaticMaskGenerator: with random weights segment-anything's thresholds
keep all or nothing), then runs its own stability / box / RLE / NMS path. Both produce masks at full
resolution; ours also paints the label map and copies it to the host. Timed end to end per image
(uint8 host image in, host arrays out), after warm-up; prompt sampling from the LiDAR (CPU, ~1 ms) is
not timed. On CPU: the same code paths with a tiny random-weight SAM on small images (smoke run).

Prints progress and a table; writes bench/out/masks_gpu.json (GPU model, versions, date). Each
configuration runs in its own try block: a failure is recorded and the rest go on.

    python bench/bench_masks_gpu.py                 # full on CUDA (< 8 min on one H100), smoke on CPU
    python bench/bench_masks_gpu.py --models vit_b --ours-images 12 --vanilla-images 1
    python bench/bench_masks_gpu.py --only-ours     # ours (bf16) only: a quick check
    python bench/bench_masks_gpu.py --legacy        # also ours image by image (the pre-batching path), and
                                                    # how far its outputs are from the batched path's
    python bench/bench_masks_gpu.py --profile       # also a torch.profiler table and the host syncs of one batch

Ours runs each encoder batch as one batch end to end (SamPromptedGenerator(batched=True)); the
``ours_*_per_image`` rows (``--legacy``) run the reference path (batched=False) that decodes, filters,
upsamples and paints image by image.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lidarlift.compat import ensure_torchvision  # noqa: E402

ensure_torchvision()

import torch  # noqa: E402

T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def synthetic_street(h: int, w: int, rng: np.random.Generator):
    """An (h, w, 3) uint8 street-like image and LiDAR-like points (uv, segment ids) on its objects."""
    img = np.empty((h, w, 3), np.float32)
    img[: h // 3] = [150, 185, 230]
    img[h // 3: h // 2] = [120, 118, 115]
    img[h // 2:] = [100, 100, 102]
    boxes = []
    for _ in range(int(rng.integers(25, 40))):
        bw, bh = rng.uniform(0.02, 0.2) * w, rng.uniform(0.03, 0.2) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(h * 0.3, h - bh)
        img[int(y0):int(y0 + bh), int(x0):int(x0 + bw)] = rng.uniform(40, 220, 3)
        boxes.append((x0, y0, x0 + bw, y0 + bh))
    img += rng.normal(0, 6, img.shape)
    image = np.clip(img, 0, 255).astype(np.uint8)
    # 32-beam-like scan lines over the lower two thirds; segment id = last box containing the point
    rows = np.linspace(h * 0.35, h - 2, 32)
    u = np.arange(0.5, w, 4.0)
    uv = np.stack(np.broadcast_arrays(u[None, :], rows[:, None]), -1).reshape(-1, 2).astype(np.float32)
    seg = np.full(len(uv), -1, np.int32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        inside = (uv[:, 0] >= x0) & (uv[:, 0] < x1) & (uv[:, 1] >= y0) & (uv[:, 1] < y1)
        seg[inside] = i
    return image, uv, seg


def build(model_type: str, device: torch.device):
    from lidarlift.masks.sam import SAM_ARCHITECTURES, build_tiny_sam

    torch.manual_seed(0)
    if model_type == "vit_tiny":
        return build_tiny_sam().to(device).eval()
    try:
        with torch.device(device):  # initialise the random weights on the GPU (seconds instead of a minute on CPU)
            model = SAM_ARCHITECTURES[model_type]()
    except Exception:  # noqa: BLE001 - older torch without device context: build on CPU, then move
        model = SAM_ARCHITECTURES[model_type]()
    return model.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_ours(model, device, args, bf16: bool, batched: bool = True, **kw):
    from lidarlift.masks.sam import SamPromptedGenerator

    kw = {"points_per_batch": args.points_per_batch, **kw}
    return SamPromptedGenerator(model, device=device, encoder_batch=args.encoder_batch, multimask="all",
                                pred_iou_thresh=-1e9, stability_thresh=-1e9, nms_thresh=1.0, max_masks=args.max_masks,
                                min_mask_area=16, bf16=bf16, batched=batched, **kw)


def agreement(a: list, b: list) -> dict:
    """How far two lists of ImageMasks are apart: label pixels equal, masks per image, matched scores."""
    eq = [float(np.mean(x.labels == y.labels)) for x, y in zip(a, b)]
    dm = [abs(x.num_masks - y.num_masks) for x, y in zip(a, b)]
    ds = [float(np.abs(x.score - y.score).max()) for x, y in zip(a, b) if x.num_masks == y.num_masks and x.num_masks]
    return {"images": len(eq), "label_pixels_equal_mean": float(np.mean(eq)), "label_pixels_equal_min": float(np.min(eq)),
            "masks_per_image_abs_diff_max": int(max(dm)), "score_abs_diff_max": max(ds) if ds else None}


def decoder_outputs_diff(model, image, prompt, device, args) -> dict:
    """The batched path's decoder (bf16, default attention) against segment-anything's own calls as in
    SamPromptedGenerator.decode, on the first ``points_per_batch`` prompts of one image: sparse
    embeddings, low-resolution logits (share of pixels on the other side of the mask threshold) and
    predicted IoU."""
    from lidarlift.masks.sam import _autocast, _SharedImages

    gen = make_ours(model, device, args, True, True)
    feats, sizes = gen.embed([image])
    (ih, iw), (H, W) = sizes[0], image.shape[:2]
    low_res, img = 4 * model.prompt_encoder.image_embedding_size[0], model.image_encoder.img_size
    lh, lw = max(1, int(round(ih * low_res / img))), max(1, int(round(iw * low_res / img)))
    n = min(len(prompt), args.points_per_batch)
    coords = torch.from_numpy(prompt.uv[:n]).to(device).float() * torch.tensor([iw / W, ih / H], device=device)
    labels = torch.where(torch.from_numpy(prompt.valid[:n]).to(device), 1, -1).int()
    pe = model.prompt_encoder
    with torch.inference_mode():
        dense_pe = pe.get_dense_pe().to(feats.dtype)
        with _autocast(device, True):
            sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)
            ref_low, ref_iou = model.mask_decoder(image_embeddings=feats[:1], image_pe=dense_pe, sparse_prompt_embeddings=sparse,
                                                  dense_prompt_embeddings=dense.to(feats.dtype), multimask_output=True)
            sp = gen._sparse_embed(coords, labels)
            shared = _SharedImages.make(model.mask_decoder.transformer, feats[:1] + pe.no_mask_embed.weight.reshape(1, -1, 1, 1).to(feats.dtype),
                                        gen._dense_pe_as(feats.dtype), gen.attention == "sdpa")
            low, iou = gen._decode_prompts(shared, [(0, 0, n)], sp, (lh, lw))
    ref_low = ref_low[..., :lh, :lw].float()
    low = low.float()
    thr = model.mask_threshold
    return {"prompts": n, "attention": gen.attention, "sparse_max_abs_diff": float((sp.float() - sparse.float()).abs().max()),
            "logits_abs_max": float(ref_low.abs().max()), "logits_max_abs_diff": float((low - ref_low).abs().max()),
            "logits_mean_abs_diff": float((low - ref_low).abs().mean()),
            "mask_pixels_flipped_share": float(((low > thr) != (ref_low > thr)).float().mean()),
            "iou_max_abs_diff": float((iou.float() - ref_iou.float()).abs().max())}


def agreements(model, images, prompts, device, args) -> dict:
    """Outputs of the batched path against the image-by-image reference on the same images.

    With random weights SAM's masks overlap heavily and their areas and scores are nearly equal, so
    the label maps are chaotic in the decoder's rounding: the bf16 reference against itself with
    another decoder batch size is the yardstick for bf16; in float32 (TF32 off) both paths should
    give the same label maps up to a few pixels.
    """
    eb, hw = args.encoder_batch, images[0].shape[:2]

    def run(bf16, batched, **kw):
        return make_ours(model, device, args, bf16, batched, **kw).generate(images[:eb], prompts[:eb], hw)

    out = {}
    if device.type == "cuda":
        out["bf16_decoder_outputs_one_image"] = decoder_outputs_diff(model, images[0], prompts[0], device, args)
        ref = run(True, False)
        out["bf16_batched_vs_reference"] = agreement(ref, run(True, True))
        out["bf16_batched_exact_attention_vs_reference"] = agreement(ref, run(True, True, attention="exact"))
        out["bf16_reference_vs_reference_points_per_batch_100"] = agreement(ref, run(True, False, points_per_batch=100))
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref = run(False, False)
        out["fp32_batched_vs_reference"] = agreement(ref, run(False, True))
        out["fp32_batched_exact_attention_vs_reference"] = agreement(ref, run(False, True, attention="exact"))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return out


def profile_ours(gen, images, prompts, device, out_stem: Path) -> dict:
    """One batch under torch.profiler (table written next to the JSON) and the host syncs it makes."""
    import warnings

    eb = gen.encoder_batch
    hw = images[0].shape[:2]
    gen.profile_ranges = True
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        gen.generate(images[:eb], prompts[:eb], hw)
        sync(device)
    gen.profile_ranges = False
    avg = prof.key_averages()
    try:
        table = avg.table(sort_by="device_time_total" if device.type == "cuda" else "cpu_time_total", row_limit=45)
    except Exception:  # noqa: BLE001 - older torch: cuda_time_total
        table = avg.table(sort_by="cuda_time_total" if device.type == "cuda" else "cpu_time_total", row_limit=45)
    out_stem.with_suffix(".txt").write_text(table)
    syncs = None
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                gen.generate(images[:eb], prompts[:eb], hw)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        where: dict[str, int] = {}
        for w in caught:
            key = f"{Path(w.filename).name}:{w.lineno}"
            where[key] = where.get(key, 0) + 1
        syncs = {"count_per_batch": len(caught), "where": where}
    return {"profile_table": str(out_stem.with_suffix(".txt").name), "host_syncs": syncs}


def bench_ours(model, images, prompts, device, args, bf16: bool, batched: bool = True, **kw) -> dict:
    gen = make_ours(model, device, args, bf16, batched, **kw)
    hw = images[0].shape[:2]
    eb = args.encoder_batch
    gen.generate(images[:eb], prompts[:eb], hw)  # warm-up (cuDNN / kernels)
    sync(device)
    gen.timings.update(encoder_s=0.0, decoder_s=0.0, images=0)
    n = args.ours_images
    t0 = time.perf_counter()
    out = []
    for a in range(0, n, eb):
        idx = [(a + j) % len(images) for j in range(min(eb, n - a))]
        out += gen.generate([images[i] for i in idx], [prompts[i] for i in idx], hw)
    sync(device)
    dt_ = time.perf_counter() - t0
    # encoder alone, one batch: the ceiling of any prompt-based method
    sync(device)
    t1 = time.perf_counter()
    gen.embed(images[:eb])
    sync(device)
    enc = (time.perf_counter() - t1) / eb
    return {"images": n, "seconds": dt_, "images_per_s": n / dt_, "s_per_image": dt_ / n,
            "masks_per_image": float(np.mean([r.num_masks for r in out])),
            "prompts_per_image": float(np.mean([len(p) for p in prompts])),
            "encoder_s_per_image": enc, "encoder_bound_images_per_s": 1 / enc,
            "split_s": {k: v for k, v in gen.timings.items() if k != "images"}}


def bench_vanilla(model, images, device, args) -> dict:
    from lidarlift.masks.sam import TopKAutomaticMaskGenerator

    amg = TopKAutomaticMaskGenerator(model, max_masks=args.max_masks, points_per_side=args.points_per_side,
                                     points_per_batch=64, box_nms_thresh=0.7, output_mode="binary_mask")
    t = time.perf_counter()
    warm_masks = len(amg.generate(images[0]))  # warm-up (also the fallback measurement)
    sync(device)
    warm = time.perf_counter() - t
    say(f"    vanilla warm-up image: {warm:.2f} s, {warm_masks} masks")
    n = args.vanilla_images if warm <= args.vanilla_max_s else 0  # too slow: report the warm-up image
    times, masks = [], []
    for i in range(n):
        sync(device)
        t = time.perf_counter()
        anns = amg.generate(images[(i + 1) % len(images)])
        sync(device)
        times.append(time.perf_counter() - t)
        masks.append(len(anns))
        say(f"    vanilla image {i + 1}/{n}: {times[-1]:.2f} s, {len(anns)} masks")
    if not times:
        times, masks = [warm], [warm_masks]
    s = float(np.mean(times))
    return {"images": len(times), "seconds": float(np.sum(times)), "images_per_s": 1 / s, "s_per_image": s,
            "warmup_s": warm, "masks_per_image": float(np.mean(masks)), "prompts_per_image": args.points_per_side ** 2}


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit_h", "vit_b"] if cuda else ["vit_tiny"])
    p.add_argument("--height", type=int, default=900 if cuda else 180)
    p.add_argument("--width", type=int, default=1600 if cuda else 320)
    p.add_argument("--ours-images", type=int, default=48 if cuda else 6)
    p.add_argument("--vanilla-images", type=int, default=3 if cuda else 1)
    p.add_argument("--vanilla-max-s", type=float, default=60.0, help="skip timed vanilla images when the warm-up image took longer")
    p.add_argument("--encoder-batch", type=int, default=6)
    p.add_argument("--points-per-batch", type=int, default=256)
    p.add_argument("--max-prompts", type=int, default=256 if cuda else 64)
    p.add_argument("--max-masks", type=int, default=128)
    p.add_argument("--points-per-side", type=int, default=32 if cuda else 8)
    p.add_argument("--no-fp32", action="store_true", help="skip the ours-in-fp32 row (separates bf16 from batching/prompting)")
    p.add_argument("--only-ours", action="store_true", help="ours in bf16 (fp32 on CPU) only: no fp32 row, no vanilla")
    p.add_argument("--legacy", action="store_true", help="also ours image by image (batched=False), and its agreement with ours")
    p.add_argument("--attention-variants", action="store_true", help="also ours with the decoder's own attention (attention=exact)")
    p.add_argument("--profile", action="store_true", help="also profile one batch of ours (tables next to --out)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "masks_gpu.json"))
    args = p.parse_args(argv)

    try:
        import segment_anything
        import torchvision
    except ImportError as e:
        print(f"cannot import {e.name}: this benchmark needs torch, torchvision (the build matching this torch, "
              f"e.g. torchvision 0.26.x for torch 2.11) and segment-anything 1.0 (pure Python: "
              f"segment_anything-1.0-py3-none-any.whl): {e}", flush=True)
        return 2

    from lidarlift.masks.prompts import lidar_prompts

    device = torch.device("cuda:0" if cuda else "cpu")
    gpu = torch.cuda.get_device_name(0) if cuda else None
    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": gpu or f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if cuda else None, "torchvision": torchvision.__version__,
                     "segment_anything": getattr(segment_anything, "__version__", "1.0"), "numpy": np.__version__},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "mode": "full (CUDA)" if cuda else "smoke (CPU, tiny random-weight SAM)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    say(f"device {info['device']}; torch {torch.__version__}; models {args.models}; images {args.height}x{args.width}")
    rng = np.random.default_rng(0)
    n_unique = 12
    images, prompts = [], []
    for _ in range(n_unique):
        img, uv, seg = synthetic_street(args.height, args.width, rng)
        images.append(img)
        prompts.append(lidar_prompts(uv, seg, (args.height, args.width), max_prompts=args.max_prompts,
                                     points_per_segment=8, min_segment_points=1))
    say(f"{n_unique} synthetic images; prompts per image {[len(q) for q in prompts]}")

    results = []
    for model_type in args.models:
        model = None
        try:
            say(f"{model_type}: building random-weight model on {device}")
            model = build(model_type, device)
            n_params = sum(q.numel() for q in model.parameters())
            rows = [("ours_bf16", True, True, {})] if cuda else [("ours_fp32", False, True, {})]
            if cuda and not args.no_fp32 and not args.only_ours and model_type == args.models[0]:
                rows.append(("ours_fp32", False, True, {}))
            if args.attention_variants:
                rows.append((rows[0][0] + "_exact_attention", rows[0][1], True, {"attention": "exact"}))
            if args.legacy:
                rows.append((rows[0][0] + "_per_image", rows[0][1], False, {}))
            for name, bf16, batched, kw in rows:
                try:
                    say(f"{model_type}: {name} ({args.ours_images} images, batches of {args.encoder_batch})")
                    r = bench_ours(model, images, prompts, device, args, bf16, batched, **kw)
                    if not batched:  # the same images through both paths
                        r["agreement_with_batched"] = agreements(model, images, prompts, device, args)
                        for key, val in r["agreement_with_batched"].items():
                            say(f"{model_type}: {key}: {val}")
                    if args.profile:
                        r.update(profile_ours(make_ours(model, device, args, bf16, batched, **kw), images, prompts, device,
                                              Path(args.out).parent / f"profile_{model_type}_{name}"))
                        say(f"{model_type}: {name} host syncs per batch: {r['host_syncs']}")
                    say(f"{model_type}: {name} {r['images_per_s']:.2f} images/s ({r['masks_per_image']:.0f} masks/image, "
                        f"encoder alone {r['encoder_bound_images_per_s']:.1f} images/s)")
                    results.append({"model": model_type, "method": name, "params": n_params, **r})
                except Exception as e:  # noqa: BLE001 - record and go on
                    say(f"{model_type}: {name} FAILED: {type(e).__name__}: {e}")
                    results.append({"model": model_type, "method": name, "error": f"{type(e).__name__}: {e}",
                                    "traceback": traceback.format_exc()[-2000:]})
                if cuda:
                    torch.cuda.empty_cache()
            try:
                if args.only_ours:
                    continue
                say(f"{model_type}: vanilla SamAutomaticMaskGenerator(points_per_side={args.points_per_side}), "
                    f"top {args.max_masks} masks kept, fp32")
                r = bench_vanilla(model, images, device, args)
                say(f"{model_type}: vanilla {r['images_per_s']:.3f} images/s ({r['s_per_image']:.2f} s/image)")
                results.append({"model": model_type, "method": "vanilla_amg", "params": n_params, **r})
            except Exception as e:  # noqa: BLE001
                say(f"{model_type}: vanilla FAILED: {type(e).__name__}: {e}")
                results.append({"model": model_type, "method": "vanilla_amg", "error": f"{type(e).__name__}: {e}",
                                "traceback": traceback.format_exc()[-2000:]})
        except Exception as e:  # noqa: BLE001
            say(f"{model_type}: FAILED: {type(e).__name__}: {e}")
            results.append({"model": model_type, "method": "build", "error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc()[-2000:]})
        finally:
            del model
            if cuda:
                torch.cuda.empty_cache()
                info.setdefault("peak_gpu_memory_gb", {})[model_type] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                torch.cuda.reset_peak_memory_stats()

    # speed-ups and goals
    summary = {}
    for model_type in args.models:
        rows = {r["method"]: r for r in results if r["model"] == model_type and "error" not in r}
        ours = rows.get("ours_bf16") or rows.get("ours_fp32")
        van = rows.get("vanilla_amg")
        s = {"ours_images_per_s": ours and ours["images_per_s"], "vanilla_images_per_s": van and van["images_per_s"]}
        if ours and van:
            s["speedup_vs_vanilla"] = ours["images_per_s"] / van["images_per_s"]
        if rows.get("ours_fp32") and rows.get("ours_bf16"):
            s["bf16_gain"] = rows["ours_bf16"]["images_per_s"] / rows["ours_fp32"]["images_per_s"]
        summary[model_type] = s
    goals = None
    if cuda and "vit_h" in summary:
        vh = summary["vit_h"]
        goals = {"speedup_ge_20x": bool(vh.get("speedup_vs_vanilla") and vh["speedup_vs_vanilla"] >= 20),
                 "vit_h_ge_10_images_per_s": bool(vh.get("ours_images_per_s") and vh["ours_images_per_s"] >= 10)}
    payload = {**info, "results": results, "summary": summary, "goals": goals, "total_s": time.perf_counter() - T0}

    print()
    print(f"{'model':9s} {'method':12s} {'images/s':>10s} {'s/image':>9s} {'masks/img':>10s} {'prompts/img':>12s}")
    for r in results:
        if "error" in r:
            print(f"{r['model']:9s} {r['method']:12s} ERROR {r['error'][:80]}")
        else:
            print(f"{r['model']:9s} {r['method']:12s} {r['images_per_s']:10.3f} {r['s_per_image']:9.3f} "
                  f"{r['masks_per_image']:10.1f} {r['prompts_per_image']:12.0f}")
    for m, s in summary.items():
        if s.get("speedup_vs_vanilla"):
            print(f"{m}: ours / vanilla = {s['speedup_vs_vanilla']:.1f}x")
    if goals:
        print(f"goals: {goals}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=float))
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
