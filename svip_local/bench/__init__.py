"""Benchmarks, traces and calibration: measure what speculation costs on this machine, replay
any draft-length policy against those costs, and choose the fastest.

    prompts   SpecBench prompts (raw text, as the SVIP paper fed them)
    traces    greedy traces: target tokens and the draft's guesses and statistics per position
    costs     the cost model of this machine for a pair, and the machine's fingerprint
    simulate  replay of a trace under a policy and a cost model; the oracle
    calibrate the policy search; store: calibrations on disk, per pair and machine
    runner    side-by-side timed runs and both speed metrics; validate: simulator vs runs
    peer      llama.cpp's own speculative binary; suite: one benchmark session; report: output
"""
