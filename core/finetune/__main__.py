"""`torchrun -m core.finetune WORKSPACE JOB_ID` / `accelerate launch -m core.finetune ...`: train one queued job."""

import sys

from core.finetune.runs import main

sys.exit(main())
