#!/usr/bin/env bash
# issue 19 item 4: rule variants vs static ladders on the graded calibration captions (grades 1-3), 64x64
cd /work/main
export PYTHONPATH=/work/main OMP_NUM_THREADS=1
C="nice -n 5 python3 -m ddit_export.cli calibrate --model flux-mini-64 --prompts calibration/prompts-graded.txt --grades 1,2,3 --readable-only --threads 1 --quiet --work /work/runs/variants64/work --profile /work/runs/variants64/profile.json"
run() { echo "=== $*"; $C "$@"; echo "exit $?"; }
run --policy ladder:head=0,n4=8,tail=6 --sweep tail=3,4,5,6,8,10 --oracle 0.33
run --policy ddit:window=any --sweep tau=0.0001,0.0002,0.0005
run --policy ddit:tau=0.0002 --sweep tau4=0.00005,0.0001
run --policy ddit:signal=x0 --sweep tau=0.002,0.003,0.005
run --policy ddit:window=fine,hold=4 --sweep tau=0.0002,0.0005,0.001
run --policy ddit:window=fine,hold=8 --sweep tau=0.0002,0.0005,0.001
run --policy ddit:window=fine,hold=8,signal=x0 --sweep tau=0.003,0.005
