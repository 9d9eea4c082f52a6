# The two commands a fresh machine needs. Each does its own set-up.
.PHONY: serve test soak matrix

serve:
	scripts/bootstrap.sh serve
	.venv/bin/maskserve serve $(ARGS)

test:
	scripts/bootstrap.sh test
	scripts/test.sh $(ARGS)

# The reliability scenarios at full size (about 10 minutes), written to docs/reliability.md.
soak:
	scripts/bootstrap.sh test
	.venv/bin/python -m tests.reliability.soak $(ARGS)

# Every facebook/maskformer-* family exported, verified and served at six canvases (one to two hours).
matrix:
	scripts/bootstrap.sh test
	MASKSERVE_SLOW=1 .venv/bin/python -m pytest -s -p no:cacheprovider tests/export/test_architecture_matrix.py $(ARGS)
