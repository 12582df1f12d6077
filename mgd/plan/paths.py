"""Where the workflow writes everything, under the config's ``results`` folder."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paths:
    results: str

    @classmethod
    def of(cls, config: dict) -> Paths:
        return cls(config["results"].rstrip("/"))

    def synth_marker(self, ds: str) -> str:
        return f"{self.results}/{ds}/data/dataset.json"

    def synth_root(self, ds: str) -> str:
        return f"{self.results}/{ds}/data"

    def dataset_yaml(self, ds: str) -> str:
        return f"{self.results}/{ds}/dataset.yaml"

    def data_check(self, ds: str, split: str) -> str:
        """`mgd check-data --out` of one dataset split: written only when every sample decodes."""
        return f"{self.results}/{ds}/checks/{split}.json"

    def split_root(self, ds: str, proto: str) -> str:
        return f"{self.results}/{ds}/splits/{proto}"

    def split_dir(self, ds: str, proto: str, slug: str) -> str:
        return f"{self.split_root(ds, proto)}/{slug}"

    def partition_dir(self, ds: str, proto: str, slug: str) -> str:
        """Every run of one dataset partition (and its teacher caches) lives below this folder."""
        return f"{self.results}/{ds}/runs/{proto}/{slug}"

    def run_dir(self, ds: str, proto: str, slug: str, run: str) -> str:
        return f"{self.partition_dir(ds, proto, slug)}/{run}"

    def model(self, ds: str, proto: str, slug: str, run: str) -> str:
        return f"{self.run_dir(ds, proto, slug, run)}/model.pt"

    def metrics(self, ds: str, proto: str, slug: str, run: str) -> str:
        return f"{self.run_dir(ds, proto, slug, run)}/metrics.json"

    def complexity_dir(self, ds: str) -> str:
        return f"{self.results}/{ds}/complexity"

    def complexity(self, ds: str, backbone: str) -> str:
        return f"{self.complexity_dir(ds)}/{backbone}.json"

    def latency_dir(self, ds: str) -> str:
        return f"{self.results}/{ds}/latency"

    def latency(self, ds: str, backbone: str) -> str:
        """`mgd latency` of the backbone's DeepLabv3+ at the dataset's crop, on the workflow's machine."""
        return f"{self.latency_dir(ds)}/{backbone}.json"

    def cache_dir(self, ds: str, proto: str, slug: str, layout: str) -> str:
        return f"{self.partition_dir(ds, proto, slug)}/teacher_cache/{layout}"

    def cache_config(self, ds: str, proto: str, slug: str, layout: str) -> str:
        return f"{self.cache_dir(ds, proto, slug, layout)}.yaml"

    def cache_partial(self, ds: str, proto: str, slug: str, layout: str) -> str:
        """Where `mgd cache` writes (and resumes) until the cache is complete and renamed to cache_dir."""
        return f"{self.cache_dir(ds, proto, slug, layout)}.partial"

    def table_csv(self, name: str) -> str:
        return f"{self.results}/{name}.csv"

    def figure(self, name: str) -> str:
        return f"{self.results}/{name}.png"
