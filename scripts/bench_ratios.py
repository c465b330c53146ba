#!/usr/bin/env python3
"""Reads simcalkv-bench JSON (--benchmark_out_format=json) and checks the performance targets.

Targets, all ratios inside one run (so one machine, one load level):
  1. compress   BM_Compress/SimCalKV/32768/<keep> takes at most 2x its roofline,
                roofline = max(bytes / copy bandwidth, flops / GEMM rate).
  2. decode bw  BM_DecodeAttention/<n>/100 for n >= 4096 reads K, V and bias at >= 70% of the copy
                bandwidth.
  3. decode f   BM_DecodeAttention/<n>/<f> takes <= 1.1 * f * the time of BM_DecodeAttention/<n>/100.
  4. arch       on every kernel table the CPU runs (BM_CompressArch/<arch>/..., BM_DecodeArch/<arch>/...,
                same run): each one's ratios as above, and AVX-512 no slower than AVX2 (time ratio <= 1).

Copy bandwidth: the largest BM_StreamCopy (a DRAM-sized buffer, since the layers measured do not
fit in the caches), as bytes copied per second (plain memcpy bandwidth). The compression roofline
counts its bytes as traffic (K and V read + survivors written), so its memory term divides by the
copy's traffic rate (read + written, traffic_bytes_per_second). Decode attention only reads; its
bytes/s are compared with the copy bandwidth, and, for information, with BM_StreamRead (a plain
read-only pass, the most one core can read) and with the copy's traffic rate. GEMM rate: the
highest flops_per_second among BM_Gemm. With --benchmark_repetitions, each benchmark's best
repetition (least seconds) is used, which filters out interference from other processes.

usage: bench_ratios.py BENCH.json [--strict]   (--strict: exit 1 if a target fails)
"""
import json
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    best = {}
    for b in data.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
            continue
        parts = [p for p in b.get("run_name", b["name"]).split("/") if ":" not in p and p != "manual_time"]
        key = tuple(parts)
        seconds = b.get("seconds")
        if seconds is None:
            continue
        if key not in best or seconds < best[key]["seconds"]:
            best[key] = b
    return best


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    strict = "--strict" in argv[1:]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    runs = load(args[0])

    copies = sorted((int(k[1]), b) for k, b in runs.items() if k[0] == "BM_StreamCopy" and len(k) == 2)
    gemms = [b for k, b in runs.items() if k[0] == "BM_Gemm"]
    if not copies or not gemms:
        print("bench_ratios: the run needs BM_StreamCopy and BM_Gemm results", file=sys.stderr)
        return 2
    copy_size, copy = copies[-1]
    copy_bw = copy["bytes_per_second"]
    traffic_bw = copy.get("traffic_bytes_per_second", 2 * copy_bw)
    reads = sorted((int(k[1]), b) for k, b in runs.items() if k[0] == "BM_StreamRead" and len(k) == 2)
    read_bw = reads[-1][1]["bytes_per_second"] if reads else None
    gemm = max(gemms, key=lambda b: b["flops_per_second"])
    gemm_rate = gemm["flops_per_second"]
    print(f"copy bandwidth  {copy_bw / 1e9:8.2f} GB/s   (BM_StreamCopy/{copy_size}: bytes copied per second;"
          f" traffic {traffic_bw / 1e9:.2f} GB/s read + written)")
    if read_bw:
        print(f"read bandwidth  {read_bw / 1e9:8.2f} GB/s   (BM_StreamRead/{reads[-1][0]})")
    print(f"GEMM rate       {gemm_rate / 1e9:8.2f} GFLOP/s ({'/'.join(gemm['run_name'].split('/')[:4])})")
    print()

    results = []  # (target, case, measured, limit, ok)

    # 1. compression roofline
    print("compression: time / roofline, roofline = max(bytes / copy traffic rate, flops / GEMM rate)")
    print(f"  {'benchmark':42s} {'seconds':>9s} {'mem s':>9s} {'flop s':>9s} {'ratio':>7s}")
    for key in sorted((k for k in runs if k[0] == "BM_Compress" and len(k) == 4),
                      key=lambda k: (k[1], int(k[2]), -int(k[3]))):
        b = runs[key]
        mem = b.get("bytes", 0.0) / traffic_bw
        flop = b.get("flops", 0.0) / gemm_rate
        roof = max(mem, flop)
        ratio = b["seconds"] / roof if roof > 0 else float("inf")
        is_target = key[1] == "SimCalKV" and key[2] == "32768"
        mark = ""
        if is_target:
            ok = ratio <= 2.0
            results.append(("compress within 2x roofline", "/".join(key), ratio, "<= 2.0", ok))
            mark = "  PASS" if ok else "  FAIL"
        print(f"  {'/'.join(key):42s} {b['seconds']:9.4f} {mem:9.4f} {flop:9.4f} {ratio:7.2f}{mark}")
    print()

    # 2. decode bandwidth
    decode = {(int(k[1]), int(k[2])): b for k, b in runs.items() if k[0] == "BM_DecodeAttention" and len(k) == 3}
    print("decode attention: bytes/s (K, V, bias read) / copy bandwidth  [/ read bw, / copy traffic, info only]")
    for (n, keep), b in sorted(decode.items()):
        ratio = b["bytes_per_second"] / copy_bw
        mark = ""
        if keep == 100 and n >= 4096:
            ok = ratio >= 0.7
            results.append(("decode >= 70% of copy bw", f"BM_DecodeAttention/{n}/{keep}", ratio, ">= 0.70", ok))
            mark = "  PASS" if ok else "  FAIL"
        extra = f"  [{b['bytes_per_second'] / read_bw:4.2f} of read" if read_bw else "  ["
        extra += f", {b['bytes_per_second'] / traffic_bw:4.2f} of copy traffic]"
        print(f"  BM_DecodeAttention/{n}/{keep:<3d}  {b['bytes_per_second'] / 1e9:7.2f} GB/s  {b['seconds'] * 1e6:9.1f} us"
              f"  ratio {ratio:5.2f}{mark}{extra}")
    print()

    # 3. decode time falls with the kept fraction
    print("decode attention: time(f) / (f * time(full))")
    for (n, keep), b in sorted(decode.items()):
        if keep == 100 or (n, 100) not in decode:
            continue
        f = keep / 100.0
        ratio = b["seconds"] / (f * decode[(n, 100)]["seconds"])
        ok = ratio <= 1.1
        results.append(("decode time <= 1.1 f full", f"BM_DecodeAttention/{n}/{keep}", ratio, "<= 1.10", ok))
        print(f"  BM_DecodeAttention/{n}/{keep:<3d}  ratio {ratio:5.2f}  {'PASS' if ok else 'FAIL'}")
    print()

    # 4. the kernel tables side by side
    arch_order = ["sse2", "avx2", "avx512bw", "neon64"]
    archs = sorted({k[1] for k in runs if k[0] in ("BM_CompressArch", "BM_DecodeArch")},
                   key=lambda a: arch_order.index(a) if a in arch_order else len(arch_order))
    if archs:
        print("kernel tables, same run: decode bytes/s / copy bandwidth; SimCalKV 32k compression time / roofline")
        print(f"  {'arch':10s} {'decode 4k':>10s} {'decode 32k':>11s} {'comp 50%':>10s} {'comp 25%':>10s} {'comp 10%':>10s}")
        table = {}
        for a in archs:
            row = []
            for n in ("4096", "32768"):
                b = runs.get(("BM_DecodeArch", a, n, "100"))
                row.append(b["bytes_per_second"] / copy_bw if b else None)
                table[(a, "decode", n)] = b["seconds"] if b else None
            for keep in ("50", "25", "10"):
                b = runs.get(("BM_CompressArch", a, "SimCalKV", "32768", keep))
                if b:
                    roof = max(b.get("bytes", 0.0) / traffic_bw, b.get("flops", 0.0) / gemm_rate)
                    row.append(b["seconds"] / roof if roof > 0 else None)
                    table[(a, "compress", keep)] = b["seconds"]
                else:
                    row.append(None)
            cells = " ".join(f"{x:10.2f}" if x is not None else f"{'-':>10s}" for x in row)
            print(f"  {a:10s} {cells}")
        if "avx2" in archs and "avx512bw" in archs:
            print("  avx512bw time / avx2 time:")
            for kind, cases in (("decode", ("4096", "32768")), ("compress", ("50", "25", "10"))):
                for c in cases:
                    t512, t2 = table.get(("avx512bw", kind, c)), table.get(("avx2", kind, c))
                    if t512 and t2:
                        ratio = t512 / t2
                        ok = ratio <= 1.0
                        label = f"{kind} {'n=' + c if kind == 'decode' else 'keep ' + c + '% at 32k'}"
                        results.append(("avx512 no slower than avx2", label, ratio, "<= 1.00", ok))
                        print(f"    {label:22s} {ratio:5.2f}  {'PASS' if ok else 'FAIL'}")
        print()

    print("summary")
    for target, case, measured, limit, ok in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {target:30s} {case:40s} {measured:7.3f} (target {limit})")
    failed = sum(1 for r in results if not r[4])
    print(f"  {len(results) - failed} of {len(results)} targets pass")
    return 1 if strict and failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
