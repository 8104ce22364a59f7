"""
Benchmarks (C{make bench}, C{delivery.md} §6): each module runs the codexgw path and a baseline side by
side in one run and writes a Markdown table and a PNG chart under C{bench/results/}.
"""
