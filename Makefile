# The two commands a fresh machine needs. Each does its own set-up.
.PHONY: serve test soak

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
