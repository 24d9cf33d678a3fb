"""Benchmark and screenshot tooling, kept out of the product packages.

May import every layer (domain, io, features, matching, engine, jobs, gui); no product package
imports it, except the CLI's ``bench`` command, lazily. Modules: ``runner`` (``annotator bench``:
driver, table, JSON), ``baseline`` (reference-style extractor), ``models`` (random-weight
full-size models), ``util`` (FLOP counting, peaks, machine info), ``gui_support`` (the real main
window for scripted use), ``screenshot`` (the README screenshot).
"""
