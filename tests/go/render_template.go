// Renders an Ollama TEMPLATE with Go's text/template, as Ollama does: the template file is the first
// argument, the conversation ({"Messages": [{"Role": ..., "Content": ...}]}) comes as JSON on stdin.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

func main() {
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var values Values
	if err := json.NewDecoder(os.Stdin).Decode(&values); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Parse(string(text)))
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		panic(err)
	}
}
