# src/plan: sources and tests of this folder (included by Makefile.am)
libautosp_a_SOURCES += src/plan/plan.h src/plan/passes.h src/plan/sp.c src/plan/graphcost.c src/plan/sac.c \
	src/plan/memplan.c src/plan/explain.c src/plan/plan.c \
	src/plan/profile.h src/plan/profile.c src/plan/predict.h src/plan/predict.c
check_PROGRAMS += tests/test_plan
TESTS += tests/test_plan
tests_test_plan_SOURCES = tests/test_plan.c tests/plan_fixtures.h
tests_test_plan_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_plan_LDADD = $(ASP_TEST_LIBS)
check_PROGRAMS += tests/test_plan_walk
TESTS += tests/test_plan_walk
tests_test_plan_walk_SOURCES = tests/test_plan_walk.c tests/plan_fixtures.h
tests_test_plan_walk_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_plan_walk_LDADD = $(ASP_TEST_LIBS)
check_PROGRAMS += tests/test_predict
TESTS += tests/test_predict
tests_test_predict_SOURCES = tests/test_predict.c tests/plan_fixtures.h
tests_test_predict_CFLAGS = $(ASP_TEST_CFLAGS)
tests_test_predict_LDADD = $(ASP_TEST_LIBS)
TESTS += tests/test_predict.sh
EXTRA_DIST += tests/test_predict.sh
