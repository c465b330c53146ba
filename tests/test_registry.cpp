#include "support.hpp"

#include <catch2/catch.hpp>

using namespace simcalkv;

TEST_CASE("registry builds policies by case-insensitive name with options", "[registry]") {
  const auto p = make_policy("simcalkv:bias=log_count,search=local:16");
  CHECK(p.name() == "SimCalKV");
  CHECK(p.spec() == "simcalkv:bias=log_count,search=local:16");
  const auto* s = p.target<SimCalKV>();
  REQUIRE(s);
  CHECK(s->options().bias == BiasMode::log_count);
  CHECK(s->options().search == SimilaritySearch::local);
  CHECK(s->options().search_radius == 16);
  CHECK(make_policy("SimCalKV:search=exact").target<SimCalKV>()->options().search == SimilaritySearch::exact);
  CHECK(make_policy("FULL").name() == "Full");
}

TEST_CASE("registry errors list what exists", "[registry][validation]") {
  CHECK_THROWS_WITH(make_policy("NoSuchKV"), Catch::Contains("unknown policy 'NoSuchKV'") && Catch::Contains("SimCalKV"));
  CHECK_THROWS_WITH(make_policy("SimCalKV:colour=red"),
                    Catch::Contains("unknown option 'colour'") && Catch::Contains("bias"));
  CHECK_THROWS_WITH(make_policy("SimCalKV:bias=loud"), Catch::Contains("not one of: bounded, calibrated"));
  CHECK_THROWS_WITH(make_policy("SimCalKV:search=local:x"), Catch::Contains("not an integer"));
  CHECK_THROWS_WITH(make_policy("SimCalKV:bias"), Catch::Contains("key=value"));
  CHECK_THROWS_WITH(make_policy("Full:x=1"), Catch::Contains("options: (none)"));
}

TEST_CASE("Full is a no-op through the type-erased policy", "[registry]") {
  testing::Layer<float> layer(2, 16, 40);
  layer.fill_random(40, 1);
  testing::Window window(2, 4, 16, 40, 2);
  const testing::Snapshot<float> snap(layer);
  LayerRequest<float> r;
  r.heads = layer.span();
  r.window = window.view;
  r.budget = Budget::keep_fraction(0.5);
  Workspace ws;
  const auto stats = make_policy("Full").compress(r, ws);
  CHECK(stats.entries_after == 80);
  CHECK(snap.same_as(layer));
}
