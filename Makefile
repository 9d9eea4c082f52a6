# The two commands a fresh machine needs. Each does its own set-up.
.PHONY: serve test

serve:
	scripts/bootstrap.sh serve
	.venv/bin/maskserve serve $(ARGS)

test:
	scripts/bootstrap.sh test
	scripts/test.sh $(ARGS)
