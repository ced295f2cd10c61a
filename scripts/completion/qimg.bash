# bash completion for qimg.  The candidates come from the program itself
# (qimg --complete: its command table, help syntax and driver tables), so
# this file holds no list of its own.
_qimg()
{
    local line=${COMP_LINE:0:COMP_POINT} words cur wb IFS
    # split on blanks only: '=' and ',' belong to the word qimg completes
    read -ra words <<< "$line"
    [[ $line == *[[:blank:]] ]] && words+=('')
    cur=${COMP_WORDS[COMP_CWORD]}
    # the part of our word that bash's COMP_WORDBREAKS ('=', ':') put into
    # earlier words: replies must leave it out
    wb=${words[-1]%"$cur"}
    IFS=$'\n'
    COMPREPLY=($("${words[0]}" --complete -- "${words[@]:1}" 2>/dev/null))
    COMPREPLY=("${COMPREPLY[@]#"$wb"}")
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=,] ]]; then
        compopt -o nospace 2>/dev/null
    fi
}
complete -o default -F _qimg qimg
