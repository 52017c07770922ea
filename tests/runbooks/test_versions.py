"""What the engine reads from a saved version through the services' caches."""

from runbooks.services import version_last_steps


def test_last_steps_are_the_last_of_the_runbook_and_of_each_group(make_runbook):
    runbook = make_runbook(
        """
        slug: outline
        name: Outline
        steps:
          - {id: a, shell: 'true'}
          - id: fan
            parallel: true
            steps:
              - {id: b, shell: 'true'}
              - id: inner
                steps:
                  - {id: c, shell: 'true'}
                  - {id: d, shell: 'true'}
          - id: tail
            steps:
              - {id: e, shell: 'true'}
        """
    )
    assert version_last_steps(runbook.latest_version) == {"inner", "d", "tail", "e"}
