.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

run: ## run the service (Postgres on 127.0.0.1:5432; NATS embedded unless KEYLEDGER_NATS_URL is set)
	go run ./cmd/keyledger serve

test: ## run every test against the local Postgres and NATS
	go test -race ./...

ci: ## what CI runs: start services if down, gofmt, vet, tests
	bash .ci/run

lint: ## gofmt and go vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	go vet ./...

fuzz: ## fuzz the key parser for 30 s
	go test -run XXX -fuzz FuzzCheckKeyFormat -fuzztime 30s ./domain/

bench: ## run every benchmark scenario against KEYLEDGER_DATABASE_URL
	go run ./cmd/keyledger-bench all

.PHONY: help run test ci lint fuzz bench
