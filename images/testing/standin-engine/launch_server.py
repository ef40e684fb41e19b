"""TEST DOUBLE: `python3 -m sglang.launch_server` in the standin-engine image starts the stand-in engine
(kimi_testbed.standin_server), not SGLang. No model runs."""

from kimi_testbed.standin_server import main

if __name__ == "__main__":
    raise SystemExit(main())
