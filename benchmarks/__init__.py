"""hiera_det's benchmarks (not part of the installed package): the side-by-side speed and memory
benchmark against the peer implementations (harness, peers, cases, report, run) and the experiment scripts
(trunk_variants, shapes_ap, video_vs_frame) and the issue-16 driver (perf_run)."""
