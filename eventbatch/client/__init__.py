"""`eventbatch batch …`: a command-line client of the eventbatch API (SPEC section 13), built on
the official `openai` SDK. `session` opens the client and turns every failure into one line,
`progress` shows a batch moving (a live bar on a terminal, plain lines elsewhere), `commands`
holds the parser and what each subcommand does."""
