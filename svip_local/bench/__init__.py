"""Measurement and reports: what speculation costs on this machine, replays of any policy
against those costs, the search that chooses one, and side-by-side benchmarks. What it
measures is stored through `svip_local.calibration`, which the engine reads; nothing in the
engine imports this package.

    prompts   SpecBench prompts (raw text, as the SVIP paper fed them)
    traces    greedy traces: target tokens and the draft's guesses and statistics per position
    costs     measuring the cost model of this machine for a pair
    simulate  the round replayed on a trace under a policy and a cost model; the oracle
    calibrate measuring (calibrate_measure), then the policy search (calibrate_search; the
              candidates come from the policy table), then its text (calibrate_text)
    runner    side-by-side timed runs and both speed metrics; validate: simulator vs runs
    peer      llama.cpp's own speculative binaries (peer_runner runs, peer_output parses);
              python_peer: llama-cpp-python's `Llama`; suite: one benchmark session
    report    markdown of a `result.BenchResult`; plots: its matplotlib figures
"""
